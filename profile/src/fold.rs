//! Folding: turning sampled stacks into the "folded" text of flame graphs (Brendan Gregg's format, which
//! inferno and flamegraph.pl read): one line per distinct stack, frames root first joined by `;`, then a space
//! and the number of samples — `larder-shard-0;main;serve;parse 42`.
//!
//! # Invariants
//! - Every sample added is counted exactly once: in its own stack's line, or (past a cap) in the one line
//!   [`OVER_CAP_FRAME`], so the counts always sum to the samples taken.
//! - A frame name never contains `;` or a line break (they would split a frame or a line): `;` becomes `:`,
//!   `\n` and `\r` become spaces. (Rust names do contain `;`, as in `<[u8; 4] as Debug>::fmt`.)
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`STACKS_MAX`] | 20,000 distinct stacks | 60 s × 997 Hz is ~60,000 samples a shard; a real profile repeats itself long before |
//! | [`TEXT_BYTES_MAX`] | 3 MiB of folded text | the reply must stay under tonic's default 4 MiB message limit |
//! | [`FRAMES_MAX`] | 128 frames a stack (deeper: the outermost are cut) | the kernel's `perf_event_max_stack` is 127 by default |

use std::collections::HashMap;

/// Most distinct stacks kept in one profile; samples of further stacks are counted under [`OVER_CAP_FRAME`].
pub const STACKS_MAX: usize = 20_000;
/// Most bytes of folded text (stack text plus the count and line break) in one profile.
pub const TEXT_BYTES_MAX: usize = 3 << 20;
/// Most frames of one stack; a deeper stack keeps its innermost frames.
pub const FRAMES_MAX: usize = 128;
/// The one stack that counts the samples of stacks past [`STACKS_MAX`] or [`TEXT_BYTES_MAX`].
pub const OVER_CAP_FRAME: &str = "[stacks over the cap]";
/// Reserved for the over-cap line so that it always fits under [`TEXT_BYTES_MAX`].
const OVER_CAP_LINE_BYTES: usize = OVER_CAP_FRAME.len() + 22;

/// One distinct stack and how many samples it had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldedStack {
    /// Frames root first, joined by `;`.
    pub stack: String,
    pub count: u64,
}

impl FoldedStack {
    /// The folded line, without its line break: `stack count`.
    pub fn line(&self) -> String {
        format!("{} {}", self.stack, self.count)
    }
}

/// Collects stacks under the caps (module docs).
#[derive(Debug, Default)]
pub struct Folder {
    index: HashMap<String, usize>,
    stacks: Vec<FoldedStack>,
    text_bytes: usize,
    over_cap_samples: u64,
}

/// A frame name made safe for the folded format (module docs, second invariant).
pub fn clean_frame(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// The folded stack text of frames given root first, each cleaned, at most [`FRAMES_MAX`] (the innermost).
pub fn fold_frames<S: AsRef<str>>(frames_root_first: &[S]) -> String {
    let skip = frames_root_first.len().saturating_sub(FRAMES_MAX);
    let mut text = String::new();
    for (i, frame) in frames_root_first[skip..].iter().enumerate() {
        if i > 0 {
            text.push(';');
        }
        text.push_str(&clean_frame(frame.as_ref()));
    }
    text
}

impl Folder {
    pub fn new() -> Folder {
        Folder::default()
    }

    /// Counts `count` samples of the stack whose frames are given root first.
    pub fn add<S: AsRef<str>>(&mut self, frames_root_first: &[S], count: u64) {
        self.add_folded(fold_frames(frames_root_first), count);
    }

    /// Counts `count` samples of an already folded stack text.
    pub fn add_folded(&mut self, stack: String, count: u64) {
        if let Some(&at) = self.index.get(&stack) {
            self.stacks[at].count += count;
            return;
        }
        // The line's bytes: the stack, a space, up to 20 digits and a line break.
        let line_bytes = stack.len() + 22;
        if self.stacks.len() >= STACKS_MAX
            || self.text_bytes + line_bytes > TEXT_BYTES_MAX - OVER_CAP_LINE_BYTES
        {
            self.over_cap_samples += count;
            return;
        }
        self.text_bytes += line_bytes;
        self.index.insert(stack.clone(), self.stacks.len());
        self.stacks.push(FoldedStack { stack, count });
    }

    /// Samples counted past the caps so far.
    pub fn over_cap_samples(&self) -> u64 {
        self.over_cap_samples
    }

    /// The stacks, the most samples first (ties by text), then the over-cap line if any sample went there.
    pub fn finish(mut self) -> Vec<FoldedStack> {
        self.stacks
            .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.stack.cmp(&b.stack)));
        if self.over_cap_samples > 0 {
            self.stacks.push(FoldedStack {
                stack: OVER_CAP_FRAME.to_string(),
                count: self.over_cap_samples,
            });
        }
        self.stacks
    }
}

/// The folded text of `stacks`: one `stack count` line each, every line ended by `\n`.
pub fn folded_text(stacks: &[FoldedStack]) -> String {
    let mut text = String::new();
    for stack in stacks {
        text.push_str(&stack.line());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_becomes_one_line_root_first() {
        let mut folder = Folder::new();
        folder.add(&["larder-shard-0", "main", "serve", "parse"], 3);
        folder.add(&["larder-shard-0", "main", "serve"], 1);
        folder.add(&["larder-shard-0", "main", "serve", "parse"], 2);
        let stacks = folder.finish();
        assert_eq!(
            folded_text(&stacks),
            "larder-shard-0;main;serve;parse 5\nlarder-shard-0;main;serve 1\n"
        );
    }

    #[test]
    fn separators_inside_names_are_replaced() {
        assert_eq!(
            fold_frames(&["<[u8; 4] as Debug>::fmt", "a\nb"]),
            "<[u8: 4] as Debug>::fmt;a b"
        );
    }

    #[test]
    fn a_deep_stack_keeps_its_innermost_frames() {
        let frames: Vec<String> = (0..FRAMES_MAX + 10).map(|i| format!("f{i}")).collect();
        let text = fold_frames(&frames);
        assert_eq!(text.split(';').count(), FRAMES_MAX);
        assert!(text.starts_with("f10;"), "{text}");
        assert!(text.ends_with(&format!(";f{}", FRAMES_MAX + 9)), "{text}");
    }

    #[test]
    fn stacks_past_the_count_cap_are_counted_in_one_line() {
        let mut folder = Folder::new();
        for i in 0..STACKS_MAX + 5 {
            folder.add(&[format!("f{i}")], 2);
        }
        // A stack already kept still counts in its own line.
        folder.add(&["f0"], 1);
        let stacks = folder.finish();
        assert_eq!(stacks.len(), STACKS_MAX + 1);
        assert_eq!(
            stacks[0],
            FoldedStack {
                stack: "f0".to_string(),
                count: 3
            }
        );
        assert_eq!(
            stacks.last(),
            Some(&FoldedStack {
                stack: OVER_CAP_FRAME.to_string(),
                count: 10
            })
        );
        let total: u64 = stacks.iter().map(|s| s.count).sum();
        assert_eq!(total, (STACKS_MAX as u64 + 5) * 2 + 1);
    }

    #[test]
    fn the_text_stays_under_its_byte_cap() {
        let mut folder = Folder::new();
        let long = "x".repeat(100_000);
        for i in 0..100 {
            folder.add(&[format!("{long}{i}")], 1);
        }
        let stacks = folder.finish();
        let text = folded_text(&stacks);
        assert!(text.len() <= TEXT_BYTES_MAX, "{} bytes", text.len());
        assert_eq!(stacks.iter().map(|s| s.count).sum::<u64>(), 100);
        assert_eq!(
            stacks.last().map(|s| s.stack.as_str()),
            Some(OVER_CAP_FRAME)
        );
        assert!(stacks.len() > 20, "only {} stacks kept", stacks.len());
    }
}
