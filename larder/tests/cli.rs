//! The command line as a new user meets it (issue 18, "One CLI"): `--cores` is a count and `--cpus` a CPU list in
//! every command, `--cores 0` answers with the `--cpus` spelling, and no help text prints a default twice.

use std::process::{Command, Output};

fn larder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("larder runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Issue 18: `larder serve --cores 0` was refused without a word about how to pin to CPU 0.
#[test]
fn cores_zero_is_refused_with_the_cpus_spelling() {
    for command in [
        &["serve", "--no-control", "--cores", "0", "."][..],
        &["dispatch", "--backend", "127.0.0.1:9", "--cores", "0"][..],
    ] {
        let output = larder(command);
        assert_eq!(output.status.code(), Some(2), "{command:?}");
        let message = stderr(&output);
        assert!(message.contains("--cores"), "names the flag: {message}");
        assert!(message.contains("--cpus 0"), "suggests --cpus 0: {message}");
    }
}

#[test]
fn cores_and_cpus_exclude_each_other() {
    let output = larder(&["serve", "--cores", "1", "--cpus", "0", "."]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("--cpus") && message.contains("cannot be used with"),
        "{message}"
    );
}

#[test]
fn a_bad_cpu_list_names_the_flag_and_the_part() {
    let output = larder(&["serve", "--no-control", "--cpus", "0,x", "."]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("--cpus") && message.contains("\"x\""),
        "{message}"
    );
}

/// Issue 18: `larder dispatch --help` printed each default twice (in the doc text and from clap).
#[test]
fn no_help_text_prints_a_default_twice() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["control"],
        &["dispatch"],
        &["ctl"],
        &["ctl", "list-nodes"],
        &["ctl", "get-node"],
        &["ctl", "get-cluster-load"],
        &["ctl", "watch-cluster-load"],
        &["ctl", "get-policy"],
        &["ctl", "set-policy"],
        &["ctl", "list-targets"],
        &["ctl", "drain"],
        &["ctl", "undrain"],
        &["ctl", "list-containers"],
        &["ctl", "set-container"],
        &["ctl", "profile"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let output = larder(&args);
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        // clap appends its "[default: …]" to the option's text, on the line where a doc's own one would end.
        for line in help.lines() {
            assert!(
                line.matches("[default:").count() <= 1,
                "larder {args:?}: a default printed twice in {line:?}"
            );
        }
    }
}

/// Issue 18: `larder dispatch` and `larder serve` both defaulted to 127.0.0.1:8080.
#[test]
fn serve_and_dispatch_default_to_different_ports() {
    let default_listen = |command: &str| {
        let output = larder(&[command, "--help"]);
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        // The --listen entry: its line and the lines of its text (long help puts the text below).
        let entry: String = help
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("--listen"))
            .take(2)
            .collect();
        let at = entry.find("[default: ").expect("a default") + "[default: ".len();
        entry[at..].split([']', ';']).next().unwrap().to_string()
    };
    let serve = default_listen("serve");
    let dispatch = default_listen("dispatch");
    assert_eq!(serve, "127.0.0.1:8080");
    assert_ne!(serve, dispatch, "serve and dispatch must not collide");
}
