//! The screen of `larder top`, drawn from a [`Snapshot`] and a [`ViewState`]: no I/O, so the same widget draws
//! the live terminal, the `--once` text and the layout tests (ratatui's `TestBackend`).
//!
//! # Layout, top to bottom
//! 1. A title line: the control plane, nodes up and down, the sort column, the last refresh's error if any.
//! 2. The node line: `all` and every node id; the one shown is in reverse video.
//! 3. The core table: one row per core, sorted; the sorted column's title carries ▼ (▲ for the core column,
//!    which sorts up).
//! 4. The hottest targets (`ListTargets`) and the cores serving them.
//! 5. Live only: the keys.
//!
//! # Small terminals
//! Columns drop out as the width shrinks, least needed first: top containers, connections, handoffs/s, p99, hit
//! ratio; then the utilisation bar shrinks to its percentage. Below [`WIDTH_MIN`] × [`HEIGHT_MIN`] the screen is a
//! single "terminal too small" line. Rows that do not fit are cut at the bottom; the targets keep at least a third
//! of the height when the cores would otherwise take it all.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Widget, Wrap};

use super::model::{CoreRow, Snapshot, SortColumn, ViewState};

/// Narrowest screen drawn: node, core, utilisation (%) and req/s with short node ids.
pub const WIDTH_MIN: u16 = 40;
/// Lowest screen drawn: title, node line, the table's header and three cores, and the keys.
pub const HEIGHT_MIN: u16 = 6;
/// Cells of the utilisation bar.
const BAR_CELLS: usize = 10;
/// Widest node id column; longer ids are cut.
const NODE_COLUMN_MAX: u16 = 24;

/// One screen's inputs.
#[derive(Clone, Copy, Debug)]
pub struct Screen<'a> {
    /// The control plane's address, as given to `--control`.
    pub control: &'a str,
    pub snapshot: &'a Snapshot,
    pub view: &'a ViewState,
    /// Why the last refresh failed, until one succeeds.
    pub status: Option<&'a str>,
    /// Draw the key line (live only).
    pub keys: bool,
}

/// The columns of the core table, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Node,
    Core,
    Utilisation { bar: bool },
    Requests,
    Latency,
    HitRatio,
    Handoffs,
    Connections,
    Containers,
}

impl Column {
    fn title(self) -> &'static str {
        match self {
            Column::Node => "NODE",
            Column::Core => "CORE",
            Column::Utilisation { .. } => "UTIL",
            Column::Requests => "REQ/S",
            Column::Latency => "P99",
            Column::HitRatio => "HIT%",
            Column::Handoffs => "HANDOFF/S",
            Column::Connections => "CONNS",
            Column::Containers => "TOP CONTAINERS (CPU)",
        }
    }

    fn sort(self) -> Option<SortColumn> {
        match self {
            Column::Core => Some(SortColumn::Core),
            Column::Utilisation { .. } => Some(SortColumn::Utilisation),
            Column::Requests => Some(SortColumn::Requests),
            Column::Latency => Some(SortColumn::Latency),
            Column::HitRatio => Some(SortColumn::HitRatio),
            Column::Handoffs => Some(SortColumn::Handoffs),
            Column::Node | Column::Connections | Column::Containers => None,
        }
    }

    /// Cells wide (the containers column: the least it needs; it takes what is left).
    fn width(self, node_width: u16) -> u16 {
        match self {
            Column::Node => node_width,
            Column::Core => 5,
            Column::Utilisation { bar: true } => BAR_CELLS as u16 + 5,
            Column::Utilisation { bar: false } => 5,
            Column::Requests => 9,
            Column::Latency => 8,
            Column::HitRatio => 5,
            Column::Handoffs => 9,
            Column::Connections => 6,
            Column::Containers => 16,
        }
    }

    fn cell(self, row: &CoreRow) -> Cell<'static> {
        let right = |text: String| Cell::from(Line::from(text).right_aligned());
        match self {
            Column::Node => Cell::from(row.node_id.clone()),
            Column::Core => right(row.shard.to_string()),
            Column::Utilisation { bar } => match row.utilisation {
                Some(share) => {
                    let percent = format!("{:>4.0}%", share * 100.0);
                    let style = Style::default().fg(if share >= 0.8 {
                        Color::Red
                    } else if share >= 0.5 {
                        Color::Yellow
                    } else {
                        Color::Green
                    });
                    let mut spans = Vec::new();
                    if bar {
                        spans.push(Span::styled(bar_text(share, BAR_CELLS), style));
                    }
                    spans.push(Span::raw(percent));
                    Cell::from(Line::from(spans).right_aligned())
                }
                None => right("-".to_string()),
            },
            Column::Requests => right(row.requests_per_second.map_or("-".to_string(), rate_text)),
            Column::Latency => right(row.latency_p99_us.map_or("-".to_string(), latency_text)),
            Column::HitRatio => right(
                row.cache_hit_ratio
                    .map_or("-".to_string(), |ratio| format!("{:.0}%", ratio * 100.0)),
            ),
            Column::Handoffs => right(row.handoffs_per_second.map_or("-".to_string(), rate_text)),
            Column::Connections => right(row.active_connections.to_string()),
            Column::Containers => Cell::from(
                row.containers
                    .iter()
                    .map(|container| {
                        format!("{} {:.0}%", container.name, container.cpu_share * 100.0)
                    })
                    .collect::<Vec<_>>()
                    .join("  "),
            ),
        }
    }
}

/// A bar of `cells` cells filled to `share` (0..=1) in eighths of a cell.
pub fn bar_text(share: f64, cells: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (share.clamp(0.0, 1.0) * (cells * 8) as f64).round() as usize;
    let mut bar = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        bar.push(PARTS[eighths % 8]);
    }
    let filled = bar.chars().count();
    bar.extend(std::iter::repeat_n(' ', cells - filled));
    bar
}

/// A rate with at most 4 digits before its unit: `950`, `12.5k`, `3.2M`.
fn rate_text(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.1}M", rate / 1e6)
    } else if rate >= 1e4 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// A latency in its handiest unit: `850µs`, `12.5ms`, `1.20s`.
fn latency_text(us: u64) -> String {
    if us == u64::MAX {
        // Beyond the node histogram's last bound (10 s).
        ">10s".to_string()
    } else if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// The core table's columns that fit `width`, dropping the least needed first.
fn columns(width: u16, node_width: u16) -> Vec<Column> {
    let mut columns = vec![
        Column::Node,
        Column::Core,
        Column::Utilisation { bar: true },
        Column::Requests,
        Column::Latency,
        Column::HitRatio,
        Column::Handoffs,
        Column::Connections,
        Column::Containers,
    ];
    let fits = |columns: &[Column]| {
        let cells: u16 = columns.iter().map(|column| column.width(node_width)).sum();
        cells + columns.len().saturating_sub(1) as u16 <= width
    };
    let drop_order = [
        Column::Containers,
        Column::Connections,
        Column::Handoffs,
        Column::Latency,
        Column::HitRatio,
    ];
    for column in drop_order {
        if fits(&columns) {
            break;
        }
        columns.retain(|kept| *kept != column);
    }
    if !fits(&columns) {
        for column in &mut columns {
            if let Column::Utilisation { bar } = column {
                *bar = false;
            }
        }
    }
    columns
}

impl Screen<'_> {
    /// Lines needed to show every core and target (the `--once` height).
    pub fn height_needed(&self) -> u16 {
        let cores = self.snapshot.rows(self.view).len();
        let height = 2 + 1 + cores + self.targets_height_needed() + usize::from(self.keys);
        u16::try_from(height).unwrap_or(u16::MAX).max(HEIGHT_MIN)
    }

    /// A blank line, the header and a row per target (one "none" row without targets).
    fn targets_height_needed(&self) -> usize {
        2 + self.snapshot.targets.len().max(1)
    }

    fn title(&self) -> Line<'static> {
        let up = self.snapshot.nodes.iter().filter(|node| node.up).count();
        let down = self.snapshot.nodes.len() - up;
        let mut spans = vec![
            Span::styled("larder top", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  control {}  nodes {up} up, {down} down  sort: {}",
                self.control,
                self.view.sort.name()
            )),
        ];
        if let Some(status) = self.status {
            spans.push(Span::styled(
                format!("  {status}"),
                Style::default().fg(Color::Red),
            ));
        }
        Line::from(spans)
    }

    fn node_line(&self) -> Line<'static> {
        let selected = Style::default().add_modifier(Modifier::REVERSED);
        let style = |shown: bool| if shown { selected } else { Style::default() };
        let mut spans = vec![
            Span::raw("node: "),
            Span::styled(" all ", style(self.view.node.is_none())),
        ];
        for node in &self.snapshot.nodes {
            let mut label = format!(" {} ", node.node_id);
            if !node.up {
                label.push_str("(down) ");
            } else if node.drained {
                label.push_str("(drained) ");
            }
            let shown = self.view.node.as_deref() == Some(node.node_id.as_str());
            spans.push(Span::styled(label, style(shown)));
        }
        Line::from(spans)
    }

    fn cores(&self, area: Rect, buf: &mut Buffer) {
        let rows = self.snapshot.rows(self.view);
        let longest = rows
            .iter()
            .map(|row| row.node_id.chars().count())
            .max()
            .unwrap_or(0);
        let node_width = u16::try_from(longest)
            .unwrap_or(u16::MAX)
            .clamp(4, NODE_COLUMN_MAX);
        let columns = columns(area.width, node_width);
        let header = Row::new(columns.iter().map(|column| {
            let mut title = column.title().to_string();
            let mut style = Style::default().add_modifier(Modifier::BOLD);
            if column.sort() == Some(self.view.sort) {
                title.push(if self.view.sort == SortColumn::Core {
                    '▲'
                } else {
                    '▼'
                });
                style = style.add_modifier(Modifier::UNDERLINED);
            }
            let title = match column {
                Column::Node | Column::Containers => Line::from(title),
                _ => Line::from(title).right_aligned(), // over right-aligned figures
            };
            Cell::from(title).style(style)
        }));
        let widths = columns.iter().map(|column| match column {
            Column::Containers => Constraint::Fill(1),
            other => Constraint::Length(other.width(node_width)),
        });
        let body = rows
            .iter()
            .map(|row| Row::new(columns.iter().map(|column| column.cell(row))));
        Widget::render(
            Table::new(body, widths).header(header).column_spacing(1),
            area,
            buf,
        );
    }

    fn targets(&self, area: Rect, buf: &mut Buffer) {
        let header = Row::new([
            Cell::from("HOTTEST TARGETS"),
            Cell::from(Line::from("REQ/S").right_aligned()),
            Cell::from("SERVED BY (NODE/CORE)"),
        ])
        .style(Style::default().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = if self.snapshot.targets.is_empty() {
            vec![Row::new(["(none reported)"])]
        } else {
            self.snapshot
                .targets
                .iter()
                .map(|target| {
                    Row::new([
                        Cell::from(target.target.clone()),
                        Cell::from(
                            Line::from(rate_text(target.requests_per_second)).right_aligned(),
                        ),
                        Cell::from(target.servers.join(" ")),
                    ])
                })
                .collect()
        };
        let widths = [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Fill(2),
        ];
        Widget::render(
            Table::new(rows, widths).header(header).column_spacing(1),
            area,
            buf,
        );
    }
}

impl Widget for &Screen<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < WIDTH_MIN || area.height < HEIGHT_MIN {
            let text = format!(
                "terminal too small: {}x{}, larder top needs {WIDTH_MIN}x{HEIGHT_MIN} (q quits)",
                area.width, area.height
            );
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .render(area, buf);
            return;
        }
        let line = |y: u16| Rect {
            y: area.y + y,
            height: 1,
            ..area
        };
        self.title().render(line(0), buf);
        self.node_line().render(line(1), buf);
        let keys = u16::from(self.keys);
        let rest = area.height - 2 - keys;
        let cores_needed =
            u16::try_from(1 + self.snapshot.rows(self.view).len()).unwrap_or(u16::MAX);
        let targets_needed = u16::try_from(self.targets_height_needed()).unwrap_or(u16::MAX);
        let mut targets_height =
            targets_needed.min(rest.saturating_sub(cores_needed).max(rest / 3));
        if targets_height < 3 {
            targets_height = 0; // a blank line and a header alone say nothing
        }
        let cores_height = (rest - targets_height).min(cores_needed);
        self.cores(
            Rect {
                y: area.y + 2,
                height: cores_height,
                ..area
            },
            buf,
        );
        if targets_height > 0 {
            let targets = Rect {
                y: area.y + 2 + cores_height + 1,
                height: targets_height - 1,
                ..area
            };
            self.targets(targets, buf);
        }
        if self.keys {
            Line::from(
                "q quit  Tab n p: node  s S: sort  c u r l h o: sort by core util req/s p99 hit handoffs",
            )
            .style(Style::default().add_modifier(Modifier::DIM))
            .render(line(area.height - 1), buf);
        }
    }
}

/// The buffer's lines as text, trailing blanks cut.
pub fn buffer_lines(buf: &Buffer) -> Vec<String> {
    let area = buf.area;
    (area.y..area.y + area.height)
        .map(|y| {
            let line: String = (area.x..area.x + area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect();
            line.trim_end().to_string()
        })
        .collect()
}

/// The whole screen as text `width` columns wide, tall enough for every core and target (`--once`).
pub fn text(screen: &Screen, width: u16) -> String {
    let area = Rect::new(0, 0, width, screen.height_needed());
    let mut buf = Buffer::empty(area);
    screen.render(area, &mut buf);
    let mut lines = buffer_lines(&buf);
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::super::model::tests::{idle_nodes, load, node};
    use super::super::model::{Model, Sample, TargetRow};
    use super::*;

    /// Two nodes of two cores each, after two samples 1 s apart (so every rate is known), and two hot targets.
    fn two_nodes() -> Snapshot {
        let mut model = Model::default();
        let targets = vec![
            TargetRow {
                target: "/index.html".to_string(),
                requests_per_second: 1234.0,
                servers: vec!["node-a/0".to_string(), "node-b/1".to_string()],
            },
            TargetRow {
                target: "/logo.png".to_string(),
                requests_per_second: 56.0,
                servers: vec!["node-b/0".to_string()],
            },
        ];
        model.update(&Sample {
            nodes: idle_nodes(&["node-a", "node-b"]),
            targets: targets.clone(),
        });
        let mut with_p99 = load(1, 4_000, 900_000, 90, 10, 7);
        with_p99.latency_p99_us = Some(1_500);
        model.update(&Sample {
            nodes: vec![
                node(
                    "node-a",
                    2,
                    1_000,
                    vec![load(0, 3_000, 250_000, 1, 1, 0), with_p99],
                ),
                node(
                    "node-b",
                    2,
                    1_000,
                    vec![load(0, 200, 500_000, 1, 0, 0), load(1, 10, 10_000, 0, 0, 0)],
                ),
            ],
            targets,
        })
    }

    fn draw(snapshot: &Snapshot, view: &ViewState, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        let screen = Screen {
            control: "127.0.0.1:50051",
            snapshot,
            view,
            status: None,
            keys: true,
        };
        terminal
            .draw(|frame| frame.render_widget(&screen, frame.area()))
            .expect("draws");
        buffer_lines(terminal.backend().buffer())
    }

    /// The index of the first line containing every one of `words`.
    fn line_with(lines: &[String], words: &[&str]) -> usize {
        lines
            .iter()
            .position(|line| words.iter().all(|word| line.contains(word)))
            .unwrap_or_else(|| panic!("no line with {words:?} in:\n{}", lines.join("\n")))
    }

    #[test]
    fn a_wide_screen_shows_every_core_of_both_nodes_sorted_with_the_indicator() {
        let snapshot = two_nodes();
        let lines = draw(&snapshot, &ViewState::default(), 140, 40);
        let header = line_with(
            &lines,
            &[
                "NODE",
                "CORE",
                "UTIL▼",
                "REQ/S",
                "P99",
                "HIT%",
                "HANDOFF/S",
                "TOP CONTAINERS",
            ],
        );
        // Utilisation order: node-a/1 90%, node-b/0 50%, node-a/0 25%, node-b/1 1%.
        let a1 = line_with(&lines, &["node-a", "90%", "4000", "1.5ms", "90%", "7"]);
        let b0 = line_with(&lines, &["node-b", "50%", "200", "100%"]);
        let a0 = line_with(&lines, &["node-a", "25%", "3000", "50%"]);
        let b1 = line_with(&lines, &["node-b", " 1%", "10"]);
        assert!(
            header < a1 && a1 < b0 && b0 < a0 && a0 < b1,
            "sorted by utilisation:\n{}",
            lines.join("\n")
        );
        assert!(
            lines[a1].contains("█████████"),
            "a 90% bar: {:?}",
            lines[a1]
        );
        assert!(
            lines[b1].contains('-'),
            "no lookups, no p99: {:?}",
            lines[b1]
        );
        let targets = line_with(&lines, &["HOTTEST TARGETS", "REQ/S", "SERVED BY"]);
        let index = line_with(&lines, &["/index.html", "1234", "node-a/0 node-b/1"]);
        assert_eq!(
            targets,
            b1 + 2,
            "the targets one blank line below the cores, not at the bottom"
        );
        assert!(targets < index);
        line_with(&lines, &["node:", "all", "node-a", "node-b"]);
        line_with(&lines, &["q quit", "Tab"]);
    }

    #[test]
    fn another_sort_column_moves_the_indicator_and_the_rows() {
        let snapshot = two_nodes();
        let view = ViewState {
            sort: SortColumn::Requests,
            ..ViewState::default()
        };
        let lines = draw(&snapshot, &view, 140, 20);
        line_with(&lines, &["UTIL ", "REQ/S▼"]);
        let a1 = line_with(&lines, &["node-a", "4000"]);
        let a0 = line_with(&lines, &["node-a", "3000"]);
        assert!(a1 < a0);
        let core = ViewState {
            sort: SortColumn::Core,
            ..ViewState::default()
        };
        line_with(&draw(&snapshot, &core, 140, 20), &["CORE▲"]);
    }

    #[test]
    fn one_node_shown_hides_the_other_nodes_cores() {
        let snapshot = two_nodes();
        let view = ViewState {
            node: Some("node-b".to_string()),
            ..ViewState::default()
        };
        let lines = draw(&snapshot, &view, 140, 20);
        let cores: Vec<&String> = lines
            .iter()
            .filter(|line| line.starts_with("node-a") || line.starts_with("node-b"))
            .collect();
        assert_eq!(cores.len(), 2, "{}", lines.join("\n"));
        assert!(cores.iter().all(|line| line.starts_with("node-b")));
    }

    #[test]
    fn a_narrow_screen_drops_columns_but_keeps_every_core() {
        let snapshot = two_nodes();
        let lines = draw(&snapshot, &ViewState::default(), 50, 16);
        line_with(&lines, &["NODE", "CORE", "UTIL▼", "REQ/S"]);
        assert!(
            !lines.iter().any(|line| line.contains("TOP CONTAINERS")),
            "{}",
            lines.join("\n")
        );
        line_with(&lines, &["node-a", "90%", "4000"]);
        line_with(&lines, &["node-b", " 1%", "10"]);
        let narrowest = draw(&snapshot, &ViewState::default(), WIDTH_MIN, 16);
        line_with(&narrowest, &["node-a", "90%", "4000"]);
    }

    #[test]
    fn the_bar_is_the_last_to_shrink_and_node_core_util_req_always_stay() {
        let all = columns(200, 14);
        assert_eq!(all.len(), 9, "{all:?}");
        // "127.0.0.1:8080" (14 cells) at the minimum width: no room for the bar, the percentage stays.
        assert_eq!(
            columns(WIDTH_MIN, 14),
            vec![
                Column::Node,
                Column::Core,
                Column::Utilisation { bar: false },
                Column::Requests
            ]
        );
        // Exactly as wide as every column but the containers needs: the containers are the first to go.
        let without_containers: u16 =
            all[..8].iter().map(|column| column.width(14)).sum::<u16>() + 7;
        assert_eq!(columns(without_containers, 14).len(), 8);
        assert!(!columns(without_containers, 14).contains(&Column::Containers));
    }

    #[test]
    fn a_terminal_below_the_minimum_says_so_without_panicking() {
        let snapshot = two_nodes();
        for (width, height) in [
            (WIDTH_MIN - 1, 20),
            (80, HEIGHT_MIN - 1),
            (1, 1),
            (0, 0),
            (10, 3),
        ] {
            let lines = draw(&snapshot, &ViewState::default(), width, height);
            if width >= 20 {
                assert!(
                    lines[0].starts_with("terminal too small"),
                    "{width}x{height}: {lines:?}"
                );
            }
        }
        // Tall enough but short: the cores come first, the targets are cut, nothing panics.
        let short = draw(&snapshot, &ViewState::default(), 100, HEIGHT_MIN);
        line_with(&short, &["UTIL▼"]);
    }

    #[test]
    fn the_once_text_is_the_same_table_with_every_row_and_no_key_line() {
        let snapshot = two_nodes();
        let view = ViewState::default();
        let screen = Screen {
            control: "127.0.0.1:50051",
            snapshot: &snapshot,
            view: &view,
            status: None,
            keys: false,
        };
        let text = text(&screen, 120);
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        line_with(&lines, &["UTIL▼"]);
        line_with(&lines, &["node-a", "90%"]);
        line_with(&lines, &["node-b", " 1%"]);
        line_with(&lines, &["/logo.png", "56", "node-b/0"]);
        assert!(!text.contains("q quit"));
        assert!(lines.iter().all(|line| line.chars().count() <= 120));
    }

    #[test]
    fn bars_fill_in_eighths() {
        assert_eq!(bar_text(0.0, 4), "    ");
        assert_eq!(bar_text(0.5, 4), "██  ");
        assert_eq!(bar_text(1.0 / 32.0, 4), "▏   ");
        assert_eq!(bar_text(1.5, 4), "████", "capped");
    }
}
