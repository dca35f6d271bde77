//! Property tests of the access-log parser: it never panics, its counts add up, and well-formed lines round-trip.

use std::path::Path;

use larder_workload::log::{parse_line, parse_log};
use proptest::prelude::*;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

proptest! {
    #[test]
    fn arbitrary_text_never_panics_and_counts_add_up(lines in proptest::collection::vec(".{0,120}", 0..40)) {
        for line in &lines {
            let _ = parse_line(line);
        }
        let text = lines.join("\n");
        let stats = parse_log(text.as_bytes(), Path::new("prop.log"), |_| Ok(())).unwrap();
        prop_assert_eq!(stats.lines, stats.parsed + stats.malformed);
    }

    #[test]
    fn near_miss_lines_never_panic(
        zone in "[+-][0-9é]{0,5}",
        stamp in "(0[1-9]|[0-9]{1,2})/(Jan|Jul|Foo|jul)/(1995|19x5|[0-9]{4}):[0-9]{2}:[0-5][0-9]:[0-9]{2}",
        request in "[A-Z]{0,6} ?[/a-zé ]{0,12}( HTTP/1\\.[01])?",
        tail in "[0-9-]{0,4} [0-9-]{0,6}",
    ) {
        let _ = parse_line(&format!("host - - [{stamp} {zone}] \"{request}\" {tail}"));
    }

    #[test]
    fn well_formed_common_lines_round_trip(
        day in 1u32..=28,
        month in 0usize..12,
        year in 1990i64..2030,
        hour in 0u32..24,
        minute in 0u32..60,
        second in 0u32..60,
        path in "/[a-z0-9/._-]{0,30}",
        status in 100u16..600,
        bytes in proptest::option::of(0u64..10_000_000),
    ) {
        let bytes_text = bytes.map_or("-".to_string(), |b| b.to_string());
        let line = format!(
            "10.0.0.1 - - [{day:02}/{}/{year}:{hour:02}:{minute:02}:{second:02} +0000] \"GET {path} HTTP/1.0\" {status} {bytes_text}",
            MONTHS[month]
        );
        let record = parse_line(&line).unwrap();
        prop_assert_eq!(&record.path, &path);
        prop_assert_eq!(record.status, status);
        prop_assert_eq!(record.bytes, bytes);
        prop_assert_eq!(record.time_s.rem_euclid(86_400), i64::from(hour * 3600 + minute * 60 + second));
        prop_assert!(record.time_s >= 631_152_000, "before 1990: {}", record.time_s);
    }
}
