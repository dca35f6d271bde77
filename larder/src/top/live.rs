//! The live screen: the terminal, the keys and a refresh thread.
//!
//! # Steps
//! 1. [`run`] takes over the terminal with `ratatui::try_init` (raw mode, alternate screen, and a panic hook that
//!    restores the terminal before the panic is printed); no mouse capture, so it works the same over SSH.
//! 2. A thread (`larder-top-refresh`) fetches a sample every [`REFRESH_INTERVAL`] and sends it over a channel of
//!    [`SAMPLES_QUEUED_MAX`]; a slow or silent control plane never blocks the keys.
//! 3. The loop waits for a key at most [`KEY_POLL`], takes any new sample into the model, and redraws when a key,
//!    a resize or a sample changed something. A failed refresh keeps the last figures and shows the error in the
//!    title until a refresh succeeds.
//! 4. `q`, Esc or Ctrl-C ends the loop; the terminal is restored on that path and on an error. The refresh
//!    thread ends at its next send (the channel is closed) or with the process.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;

use super::fetch::Fetcher;
use super::model::{Action, Model, Snapshot, SortColumn, ViewState};
use super::view::Screen;

/// Time between two refreshes.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for a key before looking for a new sample.
const KEY_POLL: Duration = Duration::from_millis(100);
/// Samples waiting for the screen; the refresh thread waits when they are not taken.
const SAMPLES_QUEUED_MAX: usize = 2;

/// What a key asks for; `None` for keys without a meaning.
pub fn action(key: KeyEvent) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return (key.code == KeyCode::Char('c')).then_some(Action::Quit);
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
        KeyCode::Tab | KeyCode::Char('n') | KeyCode::Right => Some(Action::NextNode),
        KeyCode::BackTab | KeyCode::Char('p') | KeyCode::Left => Some(Action::PreviousNode),
        KeyCode::Char('s') => Some(Action::NextSort),
        KeyCode::Char('S') => Some(Action::PreviousSort),
        KeyCode::Char(key) => SortColumn::ALL
            .into_iter()
            .find(|column| column.key() == key)
            .map(Action::Sort),
        _ => None,
    }
}

/// Runs the live screen until a quit key; `model` has seen the first sample, which made `snapshot`.
pub fn run(
    control: &str,
    mut fetcher: Fetcher,
    mut model: Model,
    snapshot: Snapshot,
    view: ViewState,
) -> anyhow::Result<()> {
    let (samples_tx, samples) = mpsc::sync_channel(SAMPLES_QUEUED_MAX);
    std::thread::Builder::new()
        .name("larder-top-refresh".to_string())
        .spawn(move || {
            let mut next = Instant::now() + REFRESH_INTERVAL;
            loop {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += REFRESH_INTERVAL;
                let sample = fetcher.sample().map_err(|error| error.to_string());
                if samples_tx.send(sample).is_err() {
                    return;
                }
            }
        })?;
    let mut terminal = ratatui::try_init()?;
    let outcome = show(&mut terminal, control, &samples, &mut model, snapshot, view);
    ratatui::restore();
    outcome
}

fn show(
    terminal: &mut DefaultTerminal,
    control: &str,
    samples: &Receiver<Result<super::model::Sample, String>>,
    model: &mut Model,
    mut snapshot: Snapshot,
    mut view: ViewState,
) -> anyhow::Result<()> {
    let mut status: Option<String> = None;
    let mut changed = true;
    loop {
        if changed {
            let screen = Screen {
                control,
                snapshot: &snapshot,
                view: &view,
                status: status.as_deref(),
                keys: true,
            };
            terminal.draw(|frame| frame.render_widget(&screen, frame.area()))?;
            changed = false;
        }
        if event::poll(KEY_POLL)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => match action(key) {
                    Some(Action::Quit) => return Ok(()),
                    Some(action) => {
                        view.apply(action, &snapshot.node_ids());
                        changed = true;
                    }
                    None => {}
                },
                Event::Resize(..) => changed = true,
                _ => {}
            }
        }
        match samples.try_recv() {
            Ok(Ok(sample)) => {
                snapshot = model.update(&sample);
                status = None;
                changed = true;
            }
            Ok(Err(error)) => {
                status = Some(format!("refresh failed: {error}"));
                changed = true;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => anyhow::bail!("the refresh thread stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn quit_keys_and_ctrl_c_quit_and_plain_c_sorts_by_core() {
        assert_eq!(action(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(action(key(KeyCode::Esc)), Some(Action::Quit));
        assert_eq!(
            action(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            action(key(KeyCode::Char('c'))),
            Some(Action::Sort(SortColumn::Core))
        );
        assert_eq!(
            action(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::CONTROL)),
            None
        );
    }

    #[test]
    fn node_and_sort_keys() {
        assert_eq!(action(key(KeyCode::Tab)), Some(Action::NextNode));
        assert_eq!(action(key(KeyCode::Char('n'))), Some(Action::NextNode));
        assert_eq!(action(key(KeyCode::BackTab)), Some(Action::PreviousNode));
        assert_eq!(action(key(KeyCode::Char('p'))), Some(Action::PreviousNode));
        assert_eq!(action(key(KeyCode::Char('s'))), Some(Action::NextSort));
        assert_eq!(action(key(KeyCode::Char('S'))), Some(Action::PreviousSort));
        for column in SortColumn::ALL {
            assert_eq!(
                action(key(KeyCode::Char(column.key()))),
                Some(Action::Sort(column))
            );
        }
        assert_eq!(action(key(KeyCode::Char('z'))), None);
    }
}
