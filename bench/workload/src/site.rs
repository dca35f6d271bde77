//! Reproducible test sites on disk.
//!
//! [`generate`] writes `files` files with sizes drawn from a [`SizeDist`] (or, with [`generate_for_workload`], the
//! targets of a [`Workload`]) under `dir` as `d00/f00000.html`, `d00/f00001.html`, …, [`FILES_PER_DIRECTORY`]
//! (1,000) files a directory, and a manifest `MANIFEST.tsv` (`path<TAB>size_bytes` a line, path relative to `dir`).
//! File `i` holds the byte pattern [`content_byte`]`(i, offset)`, so a client can check a response without the
//! manifest. The same arguments always give byte-identical trees.
//!
//! Limits: at most [`SITE_FILES_MAX`] (1,000,000) files and [`SITE_BYTES_MAX`] (8 GiB) in total; sizes are at most
//! [`crate::size::SIZE_BYTES_MAX`] each.

use std::fs;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::seeded_rng;
use crate::size::SizeDist;
use crate::workload::Workload;

/// Largest number of files one site may have.
pub const SITE_FILES_MAX: u32 = 1_000_000;
/// Largest total size of one site (8 GiB).
pub const SITE_BYTES_MAX: u64 = 8 << 30;
/// Files in each `dNN` directory.
pub const FILES_PER_DIRECTORY: u32 = 1_000;
/// Name of the manifest written at the site root.
pub const MANIFEST_FILE_NAME: &str = "MANIFEST.tsv";

/// Errors from generating or loading a site.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("site of {files} files exceeds the limit {max}")]
    TooManyFiles { files: u64, max: u32 },
    #[error("site of {bytes} bytes exceeds the limit {max} bytes")]
    TooManyBytes { bytes: u64, max: u64 },
    #[error("I/O on {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: malformed manifest line")]
    BadManifest { path: PathBuf, line: usize },
}

/// One file of a generated site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFile {
    /// Path relative to the site root, without a leading `/` (e.g. `d00/f00000.html`).
    pub path: String,
    pub size_bytes: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteManifest {
    pub files: Vec<SiteFile>,
}

impl SiteManifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size_bytes).sum()
    }

    /// Reads `dir/MANIFEST.tsv`.
    pub fn load(dir: &Path) -> Result<Self, SiteError> {
        let path = dir.join(MANIFEST_FILE_NAME);
        let io_error = |source| SiteError::Io {
            path: path.clone(),
            source,
        };
        let reader = io::BufReader::new(fs::File::open(&path).map_err(io_error)?);
        let mut files = Vec::new();
        for (number, line) in reader.lines().enumerate() {
            let line = line.map_err(io_error)?;
            let parsed = line
                .split_once('\t')
                .and_then(|(p, s)| Some((p, s.trim().parse::<u64>().ok()?)));
            let (file_path, size_bytes) = parsed.ok_or_else(|| SiteError::BadManifest {
                path: path.clone(),
                line: number + 1,
            })?;
            if files.len() >= SITE_FILES_MAX as usize {
                return Err(SiteError::TooManyFiles {
                    files: files.len() as u64 + 1,
                    max: SITE_FILES_MAX,
                });
            }
            files.push(SiteFile {
                path: file_path.to_string(),
                size_bytes,
            });
        }
        Ok(Self { files })
    }
}

/// Relative path of file `index`: `d{index / 1000:02}/f{index:05}.html`.
pub fn relative_path(index: u32) -> String {
    format!("d{:02}/f{:05}.html", index / FILES_PER_DIRECTORY, index)
}

/// Byte `offset` of file `index`: printable ASCII, differing between files and positions.
pub fn content_byte(index: u32, offset: u64) -> u8 {
    b'a' + ((u64::from(index) + offset) % 26) as u8
}

/// Writes `files` files with sizes from `sizes` (seeded by `seed`) under `dir`, plus the manifest.
pub fn generate(
    dir: &Path,
    files: u32,
    sizes: &SizeDist,
    seed: u64,
) -> Result<SiteManifest, SiteError> {
    check_files(u64::from(files))?;
    let mut rng = seeded_rng(seed);
    let sizes: Vec<u64> = (0..files).map(|_| sizes.sample(&mut rng)).collect();
    write_site(dir, &sizes)
}

/// Writes the targets of `workload` (target `i` at `relative_path(i)`, its size) under `dir`, plus the manifest.
pub fn generate_for_workload(dir: &Path, workload: &Workload) -> Result<SiteManifest, SiteError> {
    check_files(workload.targets().len() as u64)?;
    let sizes: Vec<u64> = workload.targets().iter().map(|t| t.size_bytes).collect();
    write_site(dir, &sizes)
}

fn check_files(files: u64) -> Result<(), SiteError> {
    if files > u64::from(SITE_FILES_MAX) {
        return Err(SiteError::TooManyFiles {
            files,
            max: SITE_FILES_MAX,
        });
    }
    Ok(())
}

fn write_site(dir: &Path, sizes: &[u64]) -> Result<SiteManifest, SiteError> {
    let bytes: u64 = sizes.iter().sum();
    if bytes > SITE_BYTES_MAX {
        return Err(SiteError::TooManyBytes {
            bytes,
            max: SITE_BYTES_MAX,
        });
    }
    let mut files = Vec::with_capacity(sizes.len());
    let mut chunk = Vec::with_capacity(64 << 10);
    for (index, &size_bytes) in sizes.iter().enumerate() {
        let index = index as u32;
        let relative = relative_path(index);
        let path = dir.join(&relative);
        let io_error = |source| SiteError::Io {
            path: path.clone(),
            source,
        };
        if index % FILES_PER_DIRECTORY == 0 {
            fs::create_dir_all(path.parent().expect("file has a directory")).map_err(io_error)?;
        }
        let mut out = BufWriter::new(fs::File::create(&path).map_err(io_error)?);
        let mut offset = 0u64;
        while offset < size_bytes {
            let len = (size_bytes - offset).min(64 << 10);
            chunk.clear();
            chunk.extend((offset..offset + len).map(|o| content_byte(index, o)));
            out.write_all(&chunk).map_err(io_error)?;
            offset += len;
        }
        out.flush().map_err(io_error)?;
        files.push(SiteFile {
            path: relative,
            size_bytes,
        });
    }
    let manifest_path = dir.join(MANIFEST_FILE_NAME);
    let io_error = |source| SiteError::Io {
        path: manifest_path.clone(),
        source,
    };
    let mut out = BufWriter::new(fs::File::create(&manifest_path).map_err(io_error)?);
    for file in &files {
        writeln!(out, "{}\t{}", file.path, file.size_bytes).map_err(io_error)?;
    }
    out.flush().map_err(io_error)?;
    Ok(SiteManifest { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_reproducible_tree_with_manifest() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sizes: SizeDist = "uniform:min=1,max=3000".parse().unwrap();
        let manifest = generate(a.path(), 1_005, &sizes, 9).unwrap();
        let again = generate(b.path(), 1_005, &sizes, 9).unwrap();
        assert_eq!(manifest, again);
        assert_eq!(manifest.files.len(), 1_005);
        assert_eq!(manifest.files[1_004].path, "d01/f01004.html");
        for file in [&manifest.files[0], &manifest.files[1_004]] {
            let content = fs::read(a.path().join(&file.path)).unwrap();
            assert_eq!(content.len() as u64, file.size_bytes);
            assert_eq!(content, fs::read(b.path().join(&file.path)).unwrap());
            assert_eq!(
                content[0],
                content_byte(
                    if file.path.starts_with("d01") {
                        1_004
                    } else {
                        0
                    },
                    0
                )
            );
        }
        assert_eq!(SiteManifest::load(a.path()).unwrap(), manifest);
    }

    #[test]
    fn limits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = SizeDist::Fixed { bytes: 1 };
        assert!(matches!(
            generate(dir.path(), SITE_FILES_MAX + 1, &sizes, 0),
            Err(SiteError::TooManyFiles { .. })
        ));
        fs::write(
            dir.path().join(MANIFEST_FILE_NAME),
            "d00/f00000.html\tnot-a-number\n",
        )
        .unwrap();
        assert!(matches!(
            SiteManifest::load(dir.path()),
            Err(SiteError::BadManifest { line: 1, .. })
        ));
    }
}
