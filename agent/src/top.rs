//! `modelmeter top`: a live terminal table of the agent's snapshot, refreshed every second.
//! Models (one row per name and version, so a rollout shows old and new side by side) expand to
//! their pods, pods to their containers. Sortable by any column, filterable by namespace, pod or
//! model, with node totals and the agent's health above.
//!
//! The state and the rows are plain data (`Top`, `rows`), so they are tested without a terminal;
//! `run` owns the terminal and restores it on every way out (quit, Ctrl-C, SIGTERM, a panic).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use crate::{
    attributes::Attr,
    cli,
    view::{ContainerView, ModelView, SnapshotView},
};

/// How often the snapshot is fetched (the agent folds once a second at most).
const REFRESH: Duration = Duration::from_secs(1);
/// How long one fetch may take before it counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Samples kept for each model's latency trend.
const TREND_SAMPLES: usize = 8;
const TREND_BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Name,
    Pods,
    Cpu,
    Memory,
    GpuUtilization,
    GpuMemory,
    RequestRate,
    P50,
    P99,
    Errors,
    Trend,
}

impl Column {
    fn title(self) -> &'static str {
        match self {
            Column::Name => "MODEL",
            Column::Pods => "PODS",
            Column::Cpu => "CPU",
            Column::Memory => "MEMORY",
            Column::GpuUtilization => "GPU%",
            Column::GpuMemory => "GPU MEM",
            Column::RequestRate => "REQ/S",
            Column::P50 => "P50",
            Column::P99 => "P99",
            Column::Errors => "ERR%",
            Column::Trend => "P99 TREND",
        }
    }

    /// Width in cells; the name column takes what is left.
    fn width(self) -> u16 {
        match self {
            Column::Name => 16,
            Column::Pods => 5,
            Column::Cpu | Column::Errors | Column::GpuUtilization => 5,
            Column::Memory | Column::GpuMemory => 8,
            Column::RequestRate => 7,
            Column::P50 | Column::P99 => 7,
            Column::Trend => TREND_SAMPLES as u16 + 1,
        }
    }

    /// The key that sorts by this column, shown in the footer.
    fn key(self) -> Option<char> {
        match self {
            Column::Name => Some('n'),
            Column::Pods => Some('o'),
            Column::Cpu => Some('c'),
            Column::Memory => Some('m'),
            Column::GpuUtilization => Some('g'),
            Column::GpuMemory => Some('v'),
            Column::RequestRate => Some('t'),
            Column::P50 => Some('5'),
            Column::P99 => Some('9'),
            Column::Errors => Some('e'),
            Column::Trend => None,
        }
    }

    /// Display order; every column but the trend sorts.
    const ALL: [Column; 11] = [
        Column::Name,
        Column::Pods,
        Column::Cpu,
        Column::Memory,
        Column::GpuUtilization,
        Column::GpuMemory,
        Column::RequestRate,
        Column::P50,
        Column::P99,
        Column::Errors,
        Column::Trend,
    ];

    fn sortable() -> impl Iterator<Item = Column> {
        Column::ALL.into_iter().filter(|c| c.key().is_some())
    }
}

/// The columns that fit in `width`, most useful first, in display order. GPU columns only when
/// the node has GPUs.
pub fn columns_for(width: u16, gpus: bool) -> Vec<Column> {
    let mut by_priority = vec![Column::Name, Column::Cpu, Column::Memory, Column::RequestRate, Column::P99];
    if gpus {
        by_priority.extend([Column::GpuUtilization, Column::GpuMemory]);
    }
    by_priority.extend([Column::P50, Column::Pods, Column::Errors, Column::Trend]);
    let mut chosen = Vec::new();
    let mut used = 0u16;
    for column in by_priority {
        let needed = column.width() + u16::from(!chosen.is_empty());
        if used + needed <= width || chosen.is_empty() {
            used += needed;
            chosen.push(column);
        }
    }
    Column::ALL.into_iter().filter(|c| chosen.contains(c)).collect()
}

/// A row's figures; `None` shows as `-` and sorts last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub pods: Option<f64>,
    /// Ready pods, where known: the PODS column reads `ready/pods`.
    pub ready_pods: Option<f64>,
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub gpu_utilization: Option<f64>,
    pub gpu_memory_bytes: Option<f64>,
    pub requests_per_second: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub error_ratio: Option<f64>,
}

impl Figures {
    fn get(&self, column: Column) -> Option<f64> {
        match column {
            Column::Pods => self.pods,
            Column::Cpu => self.cpu_cores,
            Column::Memory => self.memory_bytes,
            Column::GpuUtilization => self.gpu_utilization,
            Column::GpuMemory => self.gpu_memory_bytes,
            Column::RequestRate => self.requests_per_second,
            Column::P50 => self.p50_seconds,
            Column::P99 => self.p99_seconds,
            Column::Errors => self.error_ratio,
            Column::Name | Column::Trend => None,
        }
    }

    fn add(&mut self, other: &Figures) {
        fn sum(a: &mut Option<f64>, b: Option<f64>) {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0.0) + b);
            }
        }
        sum(&mut self.cpu_cores, other.cpu_cores);
        sum(&mut self.memory_bytes, other.memory_bytes);
        sum(&mut self.gpu_utilization, other.gpu_utilization);
        sum(&mut self.gpu_memory_bytes, other.gpu_memory_bytes);
        sum(&mut self.requests_per_second, other.requests_per_second);
    }
}

/// What a row stands for; also the key its expanded state is kept under across refreshes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowKey {
    Model {
        name: String,
        version: String,
    },
    Pod {
        uid: String,
    },
    Container {
        cgroup: String,
    },
    /// The group of busiest processes no rule names, and one of them.
    Unnamed,
    Process {
        pid: u32,
    },
}

/// A model's child (a pod, or a container outside any pod) with the containers below it.
type Branch = (TopRow, Vec<TopRow>);

#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub key: RowKey,
    pub depth: usize,
    pub name: String,
    /// `None` for a row without children; else whether they are shown.
    pub expanded: Option<bool>,
    pub figures: Figures,
    pub trend: String,
}

/// Everything `top` shows, apart from the terminal.
#[derive(Debug)]
pub struct Top {
    pub agent: String,
    pub view: Option<SnapshotView>,
    /// The last failure to fetch, while it lasts.
    pub error: Option<String>,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    /// The filter being typed, while the prompt is open.
    pub editing: Option<String>,
    /// Models are expanded unless collapsed; pods are collapsed unless expanded.
    collapsed: HashSet<RowKey>,
    expanded: HashSet<RowKey>,
    pub selected: usize,
    trends: HashMap<(String, String), VecDeque<Option<f64>>>,
    /// The unnamed processes' group as the user left it.
    unnamed_open: Option<bool>,
    pub quit: bool,
}

/// One container's figures.
fn container_figures(c: &ContainerView, rates: &HashMap<String, f64>) -> Figures {
    Figures {
        pods: None,
        cpu_cores: c.cpu_cores,
        memory_bytes: c.memory_working_set_bytes.map(|b| b as f64),
        gpu_utilization: c.gpu_utilization,
        gpu_memory_bytes: c.gpu_memory_bytes.map(|b| b as f64),
        requests_per_second: rates.get(&c.cgroup).copied(),
        ..Default::default()
    }
}

fn label(labels: &std::collections::BTreeMap<String, String>, attr: Attr) -> &str {
    labels.get(attr.prometheus()).map_or("", String::as_str)
}

fn model_display(name: &str, version: &str) -> String {
    match (name, version) {
        ("", _) => "(no model)".to_owned(),
        (name, "") => name.to_owned(),
        (name, version) => format!("{name}:{version}"),
    }
}

fn container_display(c: &ContainerView) -> String {
    let process = label(&c.labels, Attr::ProcessName);
    if !process.is_empty() {
        return format!("{process} (pid {})", label(&c.labels, Attr::ProcessPid));
    }
    let name = label(&c.labels, Attr::ContainerName);
    if !name.is_empty() {
        return name.to_owned();
    }
    let id = label(&c.labels, Attr::ContainerId);
    if !id.is_empty() {
        return id.chars().take(12).collect();
    }
    c.cgroup.rsplit('/').find(|s| !s.is_empty()).unwrap_or("/").to_owned()
}

fn pod_display(namespace: &str, name: &str, uid: &str) -> String {
    match (namespace, name) {
        (_, "") => format!("pod {}", uid.chars().take(8).collect::<String>()),
        ("", name) => name.to_owned(),
        (namespace, name) => format!("{namespace}/{name}"),
    }
}

impl Top {
    pub fn new(agent: &str) -> Top {
        Top {
            agent: agent.to_owned(),
            view: None,
            error: None,
            sort: Column::Cpu,
            descending: true,
            filter: String::new(),
            editing: None,
            collapsed: HashSet::new(),
            expanded: HashSet::new(),
            selected: 0,
            trends: HashMap::new(),
            unnamed_open: None,
            quit: false,
        }
    }

    /// A fetch's outcome: a new snapshot replaces the old and extends the trends; a failure is
    /// shown in one line while the last snapshot stays on screen.
    pub fn update(&mut self, fetched: Result<SnapshotView, String>) {
        match fetched {
            Ok(view) => {
                let fresh = self.view.as_ref().is_none_or(|old| old.taken_at != view.taken_at);
                if fresh {
                    for model in &view.models {
                        let trend = self.trends.entry((model.name.clone(), model.version.clone())).or_default();
                        trend.push_back(model.p99_seconds);
                        while trend.len() > TREND_SAMPLES {
                            trend.pop_front();
                        }
                    }
                    self.trends.retain(|(name, version), _| {
                        view.models.iter().any(|m| m.name == *name && m.version == *version)
                    });
                }
                self.view = Some(view);
                self.error = None;
            }
            Err(message) => self.error = Some(message),
        }
    }

    fn is_expanded(&self, key: &RowKey) -> bool {
        match key {
            RowKey::Model { .. } => !self.collapsed.contains(key),
            // Open by default only while no model has a name: then it is what there is to see.
            RowKey::Unnamed => self
                .unnamed_open
                .unwrap_or_else(|| self.view.as_ref().is_none_or(|v| v.models.iter().all(|m| m.name.is_empty()))),
            _ => self.expanded.contains(key),
        }
    }

    fn set_expanded(&mut self, key: RowKey, expanded: bool) {
        match (&key, expanded) {
            (RowKey::Model { .. }, true) => self.collapsed.remove(&key),
            (RowKey::Model { .. }, false) => self.collapsed.insert(key),
            (RowKey::Unnamed, open) => {
                self.unnamed_open = Some(open);
                true
            }
            (_, true) => self.expanded.insert(key),
            (_, false) => self.expanded.remove(&key),
        };
    }

    fn trend(&self, model: &ModelView) -> String {
        let Some(samples) = self.trends.get(&(model.name.clone(), model.version.clone())) else {
            return String::new();
        };
        let top = samples.iter().flatten().copied().fold(0.0f64, f64::max);
        samples
            .iter()
            .map(|sample| match sample {
                Some(value) if top > 0.0 => {
                    let step = (value / top * (TREND_BARS.len() - 1) as f64).round() as usize;
                    TREND_BARS[step.min(TREND_BARS.len() - 1)]
                }
                Some(_) => TREND_BARS[0],
                None => ' ',
            })
            .collect()
    }

    fn compare(&self, a: &TopRow, b: &TopRow) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let by_name = a.name.to_lowercase().cmp(&b.name.to_lowercase());
        if self.sort == Column::Name {
            return if self.descending { by_name.reverse() } else { by_name };
        }
        let ordered = match (a.figures.get(self.sort), b.figures.get(self.sort)) {
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                if self.descending { o.reverse() } else { o }
            }
            // A figure the row does not have sorts last either way.
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        ordered.then(by_name)
    }

    /// The rows on screen: models, their pods and containers where expanded, sorted at each
    /// level, with the filter applied.
    pub fn rows(&self) -> Vec<TopRow> {
        let Some(view) = &self.view else { return Vec::new() };
        let needle = self.filter.to_lowercase();
        let matches = |text: &str| needle.is_empty() || text.to_lowercase().contains(&needle);
        // Requests per second of each container, through its pod and container names.
        let mut rates: HashMap<String, f64> = HashMap::new();
        for request in &view.requests {
            let Some(rate) = request.requests_per_second else { continue };
            let pod = label(&request.labels, Attr::PodUid);
            let container = label(&request.labels, Attr::ContainerName);
            let id = label(&request.labels, Attr::ContainerId);
            if let Some(c) = view.containers.iter().find(|c| {
                (!id.is_empty() && label(&c.labels, Attr::ContainerId) == id)
                    || (id.is_empty()
                        && !pod.is_empty()
                        && label(&c.labels, Attr::PodUid) == pod
                        && label(&c.labels, Attr::ContainerName) == container)
            }) {
                *rates.entry(c.cgroup.clone()).or_default() += rate;
            }
        }
        let mut models: Vec<(TopRow, Vec<Branch>)> = Vec::new();
        for model in &view.models {
            let model_key = RowKey::Model { name: model.name.clone(), version: model.version.clone() };
            let display = model_display(&model.name, &model.version);
            let whole_model = matches(&display);
            let mine = view.containers.iter().filter(|c| {
                label(&c.labels, Attr::ModelName) == model.name && label(&c.labels, Attr::ModelVersion) == model.version
            });
            // Children: pods with their containers, and containers outside any pod.
            let mut children: Vec<Branch> = Vec::new();
            let mut pods: HashMap<String, usize> = HashMap::new();
            for c in mine {
                let figures = container_figures(c, &rates);
                let row = TopRow {
                    key: RowKey::Container { cgroup: c.cgroup.clone() },
                    depth: 2,
                    name: container_display(c),
                    expanded: None,
                    figures: figures.clone(),
                    trend: String::new(),
                };
                let uid = label(&c.labels, Attr::PodUid);
                if uid.is_empty() {
                    if whole_model || matches(&row.name) || matches(&c.cgroup) {
                        children.push((TopRow { depth: 1, ..row }, Vec::new()));
                    }
                    continue;
                }
                let namespace = label(&c.labels, Attr::Namespace);
                let pod_name = label(&c.labels, Attr::PodName);
                let pod_row_name = pod_display(namespace, pod_name, uid);
                if !(whole_model || matches(&pod_row_name) || matches(uid)) {
                    continue;
                }
                let index = *pods.entry(uid.to_owned()).or_insert_with(|| {
                    children.push((
                        TopRow {
                            key: RowKey::Pod { uid: uid.to_owned() },
                            depth: 1,
                            name: pod_row_name,
                            expanded: Some(false),
                            figures: Figures::default(),
                            trend: String::new(),
                        },
                        Vec::new(),
                    ));
                    children.len() - 1
                });
                let (pod, containers) = &mut children[index];
                pod.figures.add(&figures);
                containers.push(row);
            }
            if children.is_empty() && !whole_model {
                continue;
            }
            let row = TopRow {
                key: model_key,
                depth: 0,
                name: display,
                expanded: Some(false),
                figures: Figures {
                    pods: Some(model.replicas as f64),
                    ready_pods: model.ready_replicas.map(|r| r as f64),
                    cpu_cores: model.cpu_cores,
                    memory_bytes: Some(model.memory_working_set_bytes as f64),
                    gpu_utilization: model.gpu_utilization,
                    gpu_memory_bytes: Some(model.gpu_memory_bytes as f64),
                    requests_per_second: model.requests_per_second,
                    p50_seconds: model.p50_seconds,
                    p99_seconds: model.p99_seconds,
                    error_ratio: model.error_ratio,
                },
                trend: self.trend(model),
            };
            models.push((row, children));
        }
        models.sort_by(|a, b| self.compare(&a.0, &b.0));
        let mut out = Vec::new();
        for (mut model, mut children) in models {
            let open = !children.is_empty() && self.is_expanded(&model.key);
            model.expanded = (!children.is_empty()).then_some(open);
            out.push(model);
            if !open {
                continue;
            }
            children.sort_by(|a, b| self.compare(&a.0, &b.0));
            for (mut child, mut containers) in children {
                let open = !containers.is_empty() && self.is_expanded(&child.key);
                if matches!(child.key, RowKey::Pod { .. }) {
                    child.expanded = Some(open);
                }
                out.push(child);
                if open {
                    containers.sort_by(|a, b| self.compare(a, b));
                    out.extend(containers);
                }
            }
        }
        // Below the models, always: the busiest processes no rule names (what to write one for).
        let unnamed: Vec<TopRow> = view
            .processes
            .iter()
            .filter(|p| matches(&p.name) || matches(&p.cmdline))
            .map(|p| TopRow {
                key: RowKey::Process { pid: p.pid },
                depth: 1,
                name: format!("{} (pid {})", p.name, p.pid),
                expanded: None,
                figures: Figures {
                    cpu_cores: p.cpu_cores,
                    memory_bytes: Some(p.memory_rss_bytes as f64),
                    ..Figures::default()
                },
                trend: String::new(),
            })
            .collect();
        if !unnamed.is_empty() {
            let open = self.is_expanded(&RowKey::Unnamed);
            out.push(TopRow {
                key: RowKey::Unnamed,
                depth: 0,
                name: "(other processes)".to_owned(),
                expanded: Some(open),
                figures: Figures::default(),
                trend: String::new(),
            });
            if open {
                let mut unnamed = unnamed;
                unnamed.sort_by(|a, b| self.compare(a, b));
                out.extend(unnamed);
            }
        }
        out
    }

    /// One key press.
    pub fn key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            self.quit = true;
            return;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(text);
                    self.editing = None;
                    self.selected = 0;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !ctrl => text.push(c),
                _ => {}
            }
            return;
        }
        let rows = self.rows();
        let last = rows.len().saturating_sub(1);
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.selected = (self.selected + 1).min(last),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(10),
            KeyCode::PageDown => self.selected = (self.selected + 10).min(last),
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = last,
            KeyCode::Enter | KeyCode::Char(' ') => {
                if let Some(row) = rows.get(self.selected)
                    && let Some(open) = row.expanded
                {
                    self.set_expanded(row.key.clone(), !open);
                }
            }
            KeyCode::Char('+') => {
                for row in &rows {
                    if row.expanded == Some(false) {
                        self.set_expanded(row.key.clone(), true);
                    }
                }
            }
            KeyCode::Char('-') => {
                self.expanded.clear();
                for row in rows.iter().filter(|r| matches!(r.key, RowKey::Model { .. })) {
                    self.collapsed.insert(row.key.clone());
                }
                self.unnamed_open = Some(false);
                self.selected = 0;
            }
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char('<') | KeyCode::Left => self.step_sort(-1),
            KeyCode::Char('>') | KeyCode::Right => self.step_sort(1),
            KeyCode::Char(c) => {
                if let Some(column) = Column::sortable().find(|col| col.key() == Some(c)) {
                    self.sort_by(column);
                }
            }
            _ => {}
        }
        self.selected = self.selected.min(self.rows().len().saturating_sub(1));
    }

    /// Sorting by a column: names A→Z, figures largest first; the same key again reverses.
    fn sort_by(&mut self, column: Column) {
        if self.sort == column {
            self.descending = !self.descending;
        } else {
            self.sort = column;
            self.descending = column != Column::Name;
        }
    }

    fn step_sort(&mut self, step: isize) {
        let sortable: Vec<Column> = Column::sortable().collect();
        let at = sortable.iter().position(|c| *c == self.sort).unwrap_or(0) as isize;
        let next = (at + step).rem_euclid(sortable.len() as isize) as usize;
        self.sort_by(sortable[next]);
    }

    fn header(&self, width: usize) -> Vec<Line<'static>> {
        let dim = Style::default().add_modifier(Modifier::DIM);
        let mut lines = Vec::new();
        let Some(view) = &self.view else {
            lines.push(Line::from(format!("modelmeter top · {}", self.agent)));
            lines.push(Line::from(Span::styled("no snapshot yet", dim)));
            lines.push(Line::default());
            return lines;
        };
        let a = &view.agent;
        let probes = match &a.probe_family {
            Some(family) => format!("probes {family} ×{}", a.probes_attached),
            None => "probes off".to_owned(),
        };
        let watch = match a.pod_watch_up {
            Some(true) => "pods up",
            Some(false) => "pods DOWN",
            None => "no pod watch",
        };
        let time = view.taken_at.get(11..19).unwrap_or(&view.taken_at);
        lines.push(Line::from(truncate(&format!("modelmeter {} · {} · {time}", a.version, self.agent), width)));
        let node = &view.node;
        let mut totals = format!(
            "node  CPU {}  MEM {}  REQ/S {}",
            cli::optional(node.cpu_cores, |c| format!("{c:.2}")),
            compact_bytes(node.memory_working_set_bytes as f64),
            cli::optional(node.requests_per_second, |r| format!("{r:.1}")),
        );
        if !view.gpus.is_empty() {
            let up = view.gpus.iter().filter(|g| g.up).count();
            totals.push_str(&format!(
                "  GPUs {up}/{}  GPU MEM {}",
                view.gpus.len(),
                compact_bytes(node.gpu_memory_bytes as f64)
            ));
        }
        lines.push(Line::from(truncate(&totals, width)));
        let warn = Style::default().fg(Color::Yellow);
        let mut health: Vec<Span> = vec![Span::raw(format!("{probes} · "))];
        health.push(if a.pod_watch_up == Some(false) { Span::styled(watch, warn) } else { Span::raw(watch) });
        health.push(Span::raw(" · "));
        // A sink is shown by what needs attention: what it dropped, else what waits, else ok.
        for sink in &a.sinks {
            let (text, style) = if sink.dropped > 0 {
                (format!("{} dropped {} · ", sink.name, sink.dropped), warn)
            } else if sink.queued > 0 {
                (format!("{} queued {} · ", sink.name, sink.queued), Style::default())
            } else {
                (format!("{} ok · ", sink.name), Style::default())
            };
            health.push(Span::styled(text, style));
        }
        let drops = a.ring_buffer_drops + a.events_dropped;
        let drop_text = format!("drops {drops} · errors {}", a.collection_errors);
        health.push(if drops + a.collection_errors > 0 { Span::styled(drop_text, warn) } else { Span::raw(drop_text) });
        lines.push(Line::from(health));
        lines
    }

    fn status_line(&self, width: usize) -> Line<'static> {
        if let Some(error) = &self.error {
            // The header names the agent already; the line keeps the cause and the retry in view.
            let prefix = format!("cannot reach the agent at {}: ", self.agent);
            let text = match error.strip_prefix(&prefix) {
                Some(cause) => format!("agent unreachable ({cause}) · retrying every second"),
                None => format!("{error} · retrying every second"),
            };
            let text = text.replace('\n', " ");
            return Line::from(Span::styled(truncate(&text, width), Style::default().fg(Color::Red)));
        }
        if let Some(text) = &self.editing {
            return Line::from(format!("filter (namespace, pod or model; Enter applies, Esc cancels): {text}_"));
        }
        if !self.filter.is_empty() {
            return Line::from(format!("filter: {}   (Esc clears)", self.filter));
        }
        Line::default()
    }

    fn footer(&self, width: usize) -> Line<'static> {
        let text = "q quit  / filter  ⏎ expand  +/- all  sort: n c m t 5 9 e o g v  r reverse";
        Line::from(Span::styled(truncate(text, width), Style::default().add_modifier(Modifier::REVERSED)))
    }

    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        let width = area.width as usize;
        let header = self.header(width);
        let [header_area, status_area, table_area, footer_area] = Layout::vertical([
            Constraint::Length(header.len() as u16),
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(area);
        frame.render_widget(Paragraph::new(header), header_area);
        frame.render_widget(Paragraph::new(self.status_line(width)), status_area);
        frame.render_widget(Paragraph::new(self.footer(width)), footer_area);

        let gpus = self.view.as_ref().is_some_and(|v| !v.gpus.is_empty());
        let columns = columns_for(area.width, gpus);
        let titles = columns.iter().map(|c| {
            let mut title = c.title().to_owned();
            if *c == self.sort {
                title.push(if self.descending { '▼' } else { '▲' });
            }
            let cell = Cell::from(title);
            if *c == self.sort { cell.style(Style::default().add_modifier(Modifier::UNDERLINED)) } else { cell }
        });
        let header_row = Row::new(titles).style(Style::default().add_modifier(Modifier::BOLD));
        let rows = self.rows();
        let body = rows.iter().map(|row| {
            let cells = columns.iter().map(|column| Cell::from(cell_text(row, *column)));
            let style = if row.depth == 0 { Style::default().add_modifier(Modifier::BOLD) } else { Style::default() };
            Row::new(cells).style(style)
        });
        let widths = columns.iter().map(|c| match c {
            Column::Name => Constraint::Min(c.width()),
            other => Constraint::Length(other.width()),
        });
        let table = Table::new(body, widths)
            .header(header_row)
            .column_spacing(1)
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected((!rows.is_empty()).then_some(self.selected));
        frame.render_stateful_widget(table, table_area, &mut state);
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Bytes in at most eight cells: `512B`, `1.5KiB`, `12.0MiB`, `1.2GiB`.
pub fn compact_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0}B")
    } else if value >= 100.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Seconds in at most seven cells: `850µs`, `12.3ms`, `1.20s`.
pub fn compact_seconds(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0}µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{seconds:.2}s")
    }
}

fn cell_text(row: &TopRow, column: Column) -> String {
    // The group of unnamed processes has no figures of its own.
    if row.key == RowKey::Unnamed && column != Column::Name {
        return String::new();
    }
    let dash = || "-".to_owned();
    let f = &row.figures;
    match column {
        Column::Name => {
            let marker = match row.expanded {
                Some(true) => "▾ ",
                Some(false) => "▸ ",
                None => "  ",
            };
            format!("{}{marker}{}", "  ".repeat(row.depth), row.name)
        }
        Column::Pods => match (f.ready_pods, f.pods) {
            (Some(ready), Some(pods)) => format!("{ready:.0}/{pods:.0}"),
            (None, Some(pods)) => format!("{pods:.0}"),
            _ => String::new(),
        },
        Column::Cpu => f.cpu_cores.map_or_else(dash, |c| format!("{c:.2}")),
        Column::Memory => f.memory_bytes.map_or_else(dash, compact_bytes),
        Column::GpuUtilization => f.gpu_utilization.map_or_else(dash, |u| format!("{:.0}", u * 100.0)),
        Column::GpuMemory => f.gpu_memory_bytes.map_or_else(dash, compact_bytes),
        Column::RequestRate => f.requests_per_second.map_or_else(dash, |r| format!("{r:.1}")),
        Column::P50 => f.p50_seconds.map_or_else(dash, compact_seconds),
        Column::P99 => f.p99_seconds.map_or_else(dash, compact_seconds),
        Column::Errors => f.error_ratio.map_or_else(dash, |e| format!("{:.1}", e * 100.0)),
        Column::Trend => row.trend.clone(),
    }
}

/// Set by SIGTERM, so `top` restores the terminal instead of dying in raw mode. A hangup keeps
/// its default action: there is no terminal left to restore.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_signals() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether the terminal on stdin has hung up (the pty's other end closed, e.g. `kubectl exec`
/// cut off). The terminal library then reads end-of-file in a loop, so this is checked apart.
fn terminal_hung_up() -> bool {
    let mut poll = libc::pollfd { fd: libc::STDIN_FILENO, events: 0, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLNVAL) != 0
}

/// Runs `top` against the agent until the user quits; the error is one line for the caller.
pub fn run(agent: &str) -> Result<(), String> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDOUT_FILENO) } != 1 || unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return Err("top needs a terminal (with kubectl exec, pass -it); scripts can use `modelmeter snapshot`".into());
    }
    let (sender, receiver) = mpsc::channel();
    let target = agent.to_owned();
    std::thread::Builder::new()
        .name("top-fetch".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                if terminal_hung_up() {
                    std::process::exit(1);
                }
                if sender.send(cli::fetch_within(&target, FETCH_TIMEOUT)).is_err() {
                    return;
                }
                std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
            }
        })
        .map_err(|e| format!("cannot start the fetch thread: {e}"))?;
    install_stop_signals();
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            return Err(format!("cannot set up the terminal: {e}"));
        }
    };
    let mut top = Top::new(agent);
    let outcome = (|| -> std::io::Result<()> {
        let mut dirty = true;
        while !top.quit && !STOP.load(Ordering::Relaxed) {
            while let Ok(fetched) = receiver.try_recv() {
                top.update(fetched);
                dirty = true;
            }
            if dirty {
                terminal.draw(|frame| top.draw(frame))?;
                dirty = false;
            }
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    Event::Key(key) => top.key(key),
                    Event::Resize(..) => {}
                    _ => continue,
                }
                dirty = true;
            }
        }
        Ok(())
    })();
    ratatui::restore();
    outcome.map_err(|e| format!("terminal error: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::view::{AgentView, NodeView, PodView, RequestView};

    fn container(model: &str, version: &str, ns: &str, pod: &str, uid: &str, name: &str, cpu: f64) -> ContainerView {
        let labels: BTreeMap<String, String> = [
            ("model", model),
            ("model_version", version),
            ("namespace", ns),
            ("pod", pod),
            ("pod_uid", uid),
            ("container", name),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ContainerView {
            labels,
            cgroup: format!("/kubepods/pod{uid}/{name}"),
            cpu_seconds: 10.0,
            cpu_cores: Some(cpu),
            cpu_throttled_seconds: None,
            runqueue_delay_p99_seconds: None,
            memory_working_set_bytes: Some(1 << 20),
            memory_rss_bytes: None,
            memory_limit_bytes: None,
            oom_kills: 0,
            gpu_utilization: None,
            gpu_memory_bytes: None,
            gpu_energy_joules: None,
        }
    }

    fn model(name: &str, version: &str, pods: &[(&str, &str, &str)], cpu: f64, p99: Option<f64>) -> ModelView {
        ModelView {
            name: name.into(),
            version: version.into(),
            pods: pods
                .iter()
                .map(|(ns, pod, uid)| PodView {
                    namespace: (*ns).into(),
                    name: (*pod).into(),
                    uid: (*uid).into(),
                    containers: vec!["server".into()],
                    ready: Some(true),
                })
                .collect(),
            replicas: pods.len(),
            ready_replicas: Some(pods.len()),
            cpu_cores: Some(cpu),
            p99_seconds: p99,
            ..Default::default()
        }
    }

    fn view(taken_at: &str) -> SnapshotView {
        SnapshotView {
            schema_version: crate::view::SCHEMA_VERSION,
            taken_at: taken_at.into(),
            interval_seconds: Some(1.0),
            node: NodeView::default(),
            models: vec![
                model("chat", "1", &[("ml", "chat-1-a", "u1")], 0.2, Some(0.010)),
                model("chat", "2", &[("ml", "chat-2-a", "u2")], 0.1, Some(0.020)),
                model("embed", "", &[("search", "embed-0", "u3")], 0.9, None),
            ],
            containers: vec![
                container("chat", "1", "ml", "chat-1-a", "u1", "server", 0.2),
                container("chat", "2", "ml", "chat-2-a", "u2", "server", 0.1),
                container("embed", "", "search", "embed-0", "u3", "server", 0.6),
                container("embed", "", "search", "embed-0", "u3", "sidecar", 0.3),
            ],
            requests: vec![RequestView {
                labels: [("pod_uid", "u1"), ("container", "server")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                count: 10,
                sum_seconds: 0.1,
                p50_seconds: None,
                p90_seconds: None,
                p99_seconds: None,
                requests_per_second: Some(5.0),
            }],
            gpus: Vec::new(),
            agent: AgentView::default(),
            processes: Vec::new(),
        }
    }

    fn names(top: &Top) -> Vec<String> {
        top.rows().iter().map(|r| format!("{}{}", "  ".repeat(r.depth), r.name)).collect()
    }

    fn press(top: &mut Top, code: KeyCode) {
        top.key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    #[test]
    fn models_expand_to_pods_sorted_by_cpu_and_pods_to_containers() {
        let mut top = Top::new("http://agent");
        top.update(Ok(view("t1")));
        assert_eq!(names(&top), ["embed", "  search/embed-0", "chat:1", "  ml/chat-1-a", "chat:2", "  ml/chat-2-a"]);
        // The pod's figures are its containers' sum; its requests come through the container.
        let rows = top.rows();
        assert!((rows[1].figures.cpu_cores.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(rows[3].figures.requests_per_second, Some(5.0));
        // Enter on the embed pod shows its containers, busiest first.
        press(&mut top, KeyCode::Down);
        press(&mut top, KeyCode::Enter);
        assert_eq!(&names(&top)[1..4], ["  search/embed-0", "    server", "    sidecar"]);
        // Collapse everything, then expand everything.
        press(&mut top, KeyCode::Char('-'));
        assert_eq!(names(&top), ["embed", "chat:1", "chat:2"]);
        press(&mut top, KeyCode::Char('+'));
        assert_eq!(names(&top).len(), 6);
    }

    #[test]
    fn sort_keys_choose_the_column_and_a_second_press_reverses() {
        let mut top = Top::new("http://agent");
        top.update(Ok(view("t1")));
        press(&mut top, KeyCode::Char('-'));
        press(&mut top, KeyCode::Char('n'));
        assert_eq!(names(&top), ["chat:1", "chat:2", "embed"]);
        press(&mut top, KeyCode::Char('n'));
        assert_eq!(names(&top), ["embed", "chat:2", "chat:1"]);
        // Latency: a model without requests sorts last either way.
        press(&mut top, KeyCode::Char('9'));
        assert_eq!(names(&top), ["chat:2", "chat:1", "embed"]);
        press(&mut top, KeyCode::Char('r'));
        assert_eq!(names(&top), ["chat:1", "chat:2", "embed"]);
    }

    #[test]
    fn the_filter_matches_namespace_pod_or_model() {
        let mut top = Top::new("http://agent");
        top.update(Ok(view("t1")));
        press(&mut top, KeyCode::Char('/'));
        for c in "search".chars() {
            press(&mut top, KeyCode::Char(c));
        }
        assert!(top.filter.is_empty(), "applied only on Enter");
        press(&mut top, KeyCode::Enter);
        assert_eq!(names(&top), ["embed", "  search/embed-0"]);
        top.filter = "CHAT".into();
        assert_eq!(names(&top), ["chat:1", "  ml/chat-1-a", "chat:2", "  ml/chat-2-a"]);
        top.filter = "chat-2".into();
        assert_eq!(names(&top), ["chat:2", "  ml/chat-2-a"]);
        press(&mut top, KeyCode::Esc);
        assert_eq!(names(&top).len(), 6);
    }

    #[test]
    fn failures_keep_the_last_snapshot_and_trends_follow_each_model() {
        let mut top = Top::new("http://agent");
        top.update(Ok(view("t1")));
        let mut second = view("t2");
        second.models[0].p99_seconds = Some(0.040);
        top.update(Ok(second.clone()));
        top.update(Ok(second));
        top.update(Err("cannot reach the agent at http://agent: refused".into()));
        assert!(top.view.is_some());
        assert!(top.error.is_some());
        let chat1 = top.rows().into_iter().find(|r| r.name == "chat:1").unwrap();
        assert_eq!(chat1.trend, "▃█", "one sample per snapshot, scaled to the largest");
        top.update(Ok(view("t3")));
        assert!(top.error.is_none());
    }

    #[test]
    fn processes_no_rule_names_are_listed_below_the_models() {
        let mut top = Top::new("http://agent");
        let mut snapshot = view("t1");
        snapshot.processes = vec![crate::view::ProcessView {
            pid: 42,
            name: "python3".into(),
            cmdline: "python3 -m http.server".into(),
            cpu_cores: Some(0.5),
            memory_rss_bytes: 1 << 20,
        }];
        top.update(Ok(snapshot));
        press(&mut top, KeyCode::Char('-'));
        assert_eq!(names(&top), ["embed", "chat:1", "chat:2", "(other processes)"], "closed beside named models");
        press(&mut top, KeyCode::Char('+'));
        assert_eq!(names(&top).last().map(String::as_str), Some("  python3 (pid 42)"));
        top.filter = "http.server".into();
        assert_eq!(names(&top), ["(other processes)", "  python3 (pid 42)"]);
        // With no named model the group is open from the start.
        let mut fresh = Top::new("http://agent");
        let mut unnamed_only = view("t1");
        unnamed_only.models.clear();
        unnamed_only.containers.clear();
        unnamed_only.processes = top.view.as_ref().unwrap().processes.clone();
        fresh.update(Ok(unnamed_only));
        assert_eq!(names(&fresh), ["(other processes)", "  python3 (pid 42)"]);
    }

    #[test]
    fn columns_fit_the_width_and_keep_the_most_useful() {
        let width =
            |columns: &[Column]| -> u16 { columns.iter().map(|c| c.width()).sum::<u16>() + columns.len() as u16 - 1 };
        let all = columns_for(80, false);
        assert!(width(&all) <= 80, "{all:?}");
        assert!(all.contains(&Column::Trend) && all.contains(&Column::P50));
        let narrow = columns_for(40, false);
        assert_eq!(narrow, [Column::Name, Column::Cpu, Column::Memory, Column::RequestRate]);
        let gpus = columns_for(80, true);
        assert!(gpus.contains(&Column::GpuUtilization) && width(&gpus) <= 80, "{gpus:?}");
        assert_eq!(compact_bytes(512.0), "512B");
        assert_eq!(compact_bytes(1.5 * 1024.0 * 1024.0 * 1024.0), "1.5GiB");
        assert_eq!(compact_seconds(0.0123), "12.3ms");
        assert_eq!(compact_seconds(0.00085), "850µs");
    }

    #[test]
    fn rendering_in_80_columns_shows_the_rows_and_the_footer() {
        let mut top = Top::new("http://agent");
        top.update(Ok(view("2026-01-01T00:00:00.000Z")));
        let backend = ratatui::backend::TestBackend::new(80, 24);
        let mut terminal = ratatui::Terminal::new(backend).unwrap();
        terminal.draw(|f| top.draw(f)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .chunks(80)
            .map(|line| line.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        assert!(screen.contains("MODEL") && screen.contains("P99 TREND"), "{screen}");
        assert!(screen.contains("▾ embed"), "{screen}");
        assert!(screen.contains("search/embed-0"), "{screen}");
        assert!(screen.contains("q quit"), "{screen}");
    }
}
