//! The name rule: which strings are container names and node ids, everywhere in Larder.
//!
//! # What this module owns
//! The one rule for the two kinds of names an operator types and every side stores: container names (the
//! runtime's [`ContainerSpec`](crate::container::ContainerSpec), `[[containers]]` in `larder serve`'s TOML, the
//! control plane's `Container.name`) and node ids (the control plane's registry, `larder.v1` `node_id` fields).
//! It lives here, in the crate under both the node and the control plane, so a name valid in one place is valid
//! in every other: a container the control plane accepts is one every node can create.
//!
//! # The rule
//! | kind | length | characters |
//! |---|---|---|
//! | container name | 1..=128 bytes ([`NAME_BYTES_MAX`]) | ASCII letters, digits, `.` `_` `:` `-` |
//! | node id | 1..=128 bytes ([`NAME_BYTES_MAX`]) | the same, plus `[` `]` `%` |
//!
//! A node's id is its HTTP listen address (`127.0.0.1:8080`, `[::1]:8080`, `[fe80::1%2]:8080`) or a host name
//! (`node-a`): the extra characters of node ids are those of a socket address. Every socket address fits: the
//! longest, `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535`, is 58 bytes.
//!
//! # Why so narrow
//! Names travel in log lines, `larder ctl` tables, TOML files, JSON state files and HTTP-adjacent text: no
//! spaces, quotes, slashes, control bytes (NUL among them) or non-ASCII, so a name is printed as is, never
//! escaped, and never confused with the text around it.

use thiserror::Error;

/// Longest container name or node id, in bytes.
pub const NAME_BYTES_MAX: usize = 128;

/// The punctuation a container name may hold besides ASCII letters and digits.
pub const CONTAINER_NAME_PUNCTUATION: &str = "._:-";
/// The punctuation a node id may hold besides ASCII letters and digits (a socket address's).
pub const NODE_ID_PUNCTUATION: &str = "._:-[]%";

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{bytes} bytes, at most {NAME_BYTES_MAX}")]
    TooLong { bytes: usize },
    #[error("byte {offset} is {found:?}: only ASCII letters, digits and {allowed:?} are allowed")]
    Disallowed {
        /// Byte offset of the first disallowed character.
        offset: usize,
        found: char,
        /// The punctuation the name's kind allows.
        allowed: &'static str,
    },
}

fn check(name: &str, punctuation: &'static str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong { bytes: name.len() });
    }
    let disallowed = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || punctuation.contains(*c)));
    match disallowed {
        Some((offset, found)) => Err(NameError::Disallowed {
            offset,
            found,
            allowed: punctuation,
        }),
        None => Ok(()),
    }
}

/// Checks a container name: 1..=128 bytes of ASCII letters, digits and `._:-`.
pub fn check_container_name(name: &str) -> Result<(), NameError> {
    check(name, CONTAINER_NAME_PUNCTUATION)
}

/// Checks a node id: 1..=128 bytes of ASCII letters, digits and `._:-[]%` (a host name or a socket address).
pub fn check_node_id(id: &str) -> Result<(), NameError> {
    check(id, NODE_ID_PUNCTUATION)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn container_names_take_letters_digits_and_four_marks() {
        for name in [
            "default",
            "api",
            "c0",
            "tenant-a.batch_2:low",
            &"x".repeat(NAME_BYTES_MAX),
        ] {
            assert_eq!(check_container_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(check_container_name(""), Err(NameError::Empty));
        assert_eq!(
            check_container_name(&"x".repeat(NAME_BYTES_MAX + 1)),
            Err(NameError::TooLong { bytes: 129 })
        );
        for (name, offset, found) in [
            ("a\0b", 1, '\0'),
            ("a b", 1, ' '),
            ("web/1", 3, '/'),
            ("[::1]:80", 0, '['),
            ("caf\u{e9}", 3, '\u{e9}'),
            ("\"q\"", 0, '"'),
        ] {
            assert_eq!(
                check_container_name(name),
                Err(NameError::Disallowed {
                    offset,
                    found,
                    allowed: CONTAINER_NAME_PUNCTUATION
                }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn every_socket_address_is_a_node_id() {
        let longest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
        for text in ["127.0.0.1:8080", "[::1]:8080", "[fe80::1%2]:8080", longest] {
            let address: SocketAddr = text.parse().expect("a socket address");
            let id = address.to_string();
            assert_eq!(check_node_id(&id), Ok(()), "{id:?}");
            assert!(id.len() <= longest.len(), "{id:?}");
        }
        assert_eq!(longest.len(), 58);
        assert_eq!(check_node_id("node-a"), Ok(()));
    }

    #[test]
    fn node_ids_refuse_what_container_names_refuse() {
        assert_eq!(check_node_id(""), Err(NameError::Empty));
        for name in ["a\0b", "a b", "node/1", "n\u{e9}"] {
            assert!(
                matches!(check_node_id(name), Err(NameError::Disallowed { .. })),
                "{name:?}"
            );
        }
        assert_eq!(
            check_node_id(&"n".repeat(NAME_BYTES_MAX + 1)),
            Err(NameError::TooLong { bytes: 129 })
        );
    }

    #[test]
    fn the_message_shows_the_byte_escaped() {
        let message = check_container_name("a\0b").unwrap_err().to_string();
        assert_eq!(
            message,
            r#"byte 1 is '\0': only ASCII letters, digits and "._:-" are allowed"#
        );
    }
}
