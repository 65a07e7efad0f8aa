//! Cases, their states and severities, the events that feed them, and what the store returns.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// What raised a case. Cases of different categories of one device are correlated separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Anomalous values (single series or a device's metrics together).
    Anomaly,
    /// A device or series stopped reporting.
    Silence,
    /// The agent reported a gap in its data (shed or lost readings).
    Gap,
    /// The pipeline itself (WAL disk, consumer lag, failing notifications).
    Pipeline,
}

impl Category {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anomaly => "anomaly",
            Self::Silence => "silence",
            Self::Gap => "gap",
            Self::Pipeline => "pipeline",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "anomaly" => Self::Anomaly,
            "silence" => Self::Silence,
            "gap" => Self::Gap,
            "pipeline" => Self::Pipeline,
            _ => return None,
        })
    }
}

/// Lifecycle state of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseState {
    /// New, nobody has looked at it.
    Open,
    /// Someone has seen it.
    Acknowledged,
    /// Someone is working on it (never auto-resolved).
    Investigating,
    /// Closed: the condition was real (or cleared by itself, when resolved automatically).
    Resolved,
    /// Closed: it was not an anomaly.
    FalsePositive,
}

impl CaseState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Open,
        Self::Acknowledged,
        Self::Investigating,
        Self::Resolved,
        Self::FalsePositive,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Investigating => "investigating",
            Self::Resolved => "resolved",
            Self::FalsePositive => "false_positive",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the case is closed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Resolved | Self::FalsePositive)
    }

    /// The state after `action`, or `None` when the action is not allowed from this state.
    pub fn after(self, action: &Action) -> Option<Self> {
        use CaseState::*;
        match (self, action) {
            (Open, Action::Acknowledge) => Some(Acknowledged),
            (Open | Acknowledged, Action::Investigate) => Some(Investigating),
            (Open | Acknowledged | Investigating, Action::Resolve { outcome, .. }) => {
                Some(match outcome {
                    Outcome::Confirmed | Outcome::Cleared => Resolved,
                    Outcome::FalsePositive => FalsePositive,
                })
            }
            (Resolved | FalsePositive, Action::Reopen { .. }) => Some(Open),
            (_, Action::Assign { .. } | Action::Comment { .. }) => Some(self),
            _ => None,
        }
    }

    /// The actions allowed from this state (for error messages).
    pub fn allowed(self) -> &'static str {
        match self {
            Self::Open => "acknowledge, investigate, resolve, assign, comment",
            Self::Acknowledged => "investigate, resolve, assign, comment",
            Self::Investigating => "resolve, assign, comment",
            Self::Resolved | Self::FalsePositive => "reopen, assign, comment",
        }
    }
}

/// Severity in five levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// 1: worth a look some time.
    Info = 1,
    /// 2.
    Low = 2,
    /// 3.
    Medium = 3,
    /// 4.
    High = 4,
    /// 5: wake someone up.
    Critical = 5,
}

impl Severity {
    /// From a level 1..=5 (clamped).
    pub fn from_level(l: i64) -> Self {
        match l {
            i64::MIN..=1 => Self::Info,
            2 => Self::Low,
            3 => Self::Medium,
            4 => Self::High,
            _ => Self::Critical,
        }
    }

    /// The level 1..=5.
    pub fn level(self) -> i64 {
        self as i64
    }

    /// Parses a name (`high`) or a level (`4`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "info" | "1" => Self::Info,
            "low" | "2" => Self::Low,
            "medium" | "3" => Self::Medium,
            "high" | "4" => Self::High,
            "critical" | "5" => Self::Critical,
            _ => return None,
        })
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// How a case was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A real anomaly (labelled `confirmed` for the detector).
    Confirmed,
    /// Not an anomaly (labelled `false_positive`; raises the series' thresholds).
    FalsePositive,
    /// Closed without a verdict (the automatic resolve uses this; no label).
    Cleared,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::FalsePositive => "false_positive",
            Self::Cleared => "cleared",
        }
    }
}

/// An operator's (or the system's) change to a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// open → acknowledged.
    Acknowledge,
    /// open | acknowledged → investigating.
    Investigate,
    /// Close the case with a verdict.
    Resolve {
        /// The verdict.
        outcome: Outcome,
        /// Root cause (free text), kept with the label.
        #[serde(default)]
        root_cause: Option<String>,
        /// A note for the timeline.
        #[serde(default)]
        note: Option<String>,
    },
    /// Closed → open.
    Reopen {
        /// Why.
        #[serde(default)]
        note: Option<String>,
    },
    /// Set (or clear, with `None`) the assignee.
    Assign {
        /// Who.
        assignee: Option<String>,
    },
    /// Add a comment.
    Comment {
        /// The text.
        text: String,
    },
}

impl Action {
    /// The action's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Acknowledge => "acknowledge",
            Self::Investigate => "investigate",
            Self::Resolve { .. } => "resolve",
            Self::Reopen { .. } => "reopen",
            Self::Assign { .. } => "assign",
            Self::Comment { .. } => "comment",
        }
    }
}

/// An anomaly event as the case manager receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEvent {
    /// Stable id: the same event delivered twice (after a crash) is taken once.
    pub id: String,
    /// The category of case it feeds.
    pub category: Category,
    /// The device.
    pub device_id: String,
    /// The metric, for single-series findings.
    pub metric: Option<String>,
    /// Metrics that contributed (multivariate findings); `metric` is added when set.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Event time.
    pub ts: Millis,
    /// Detector kind (`anomaly`, `multivariate`, `silence`, ...).
    pub kind: String,
    /// Score in [0, 1].
    pub score: f64,
    /// The model version that raised it.
    pub model_version: String,
    /// The detector's explanation (JSON).
    pub explanation: serde_json::Value,
}

impl CaseEvent {
    /// Every metric the event names, without duplicates.
    pub fn all_metrics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.metric.iter().cloned().collect();
        for m in &self.metrics {
            if !v.contains(m) {
                v.push(m.clone());
            }
        }
        v
    }
}

/// A case as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Id.
    pub id: i64,
    /// What raised it.
    pub category: Category,
    /// The device (or `pipeline` component).
    pub device_id: String,
    /// State.
    pub state: CaseState,
    /// Severity.
    pub severity: Severity,
    /// One-line summary.
    pub title: String,
    /// Metrics involved.
    pub metrics: Vec<String>,
    /// Assignee.
    pub assignee: Option<String>,
    /// Wall time the case was opened.
    pub opened_at: Millis,
    /// Wall time of the last change.
    pub updated_at: Millis,
    /// Event time of the first anomaly.
    pub first_event_ts: Millis,
    /// Event time of the last anomaly.
    pub last_event_ts: Millis,
    /// Wall time the last anomaly was attached.
    pub last_seen_at: Millis,
    /// Wall time it was closed.
    pub resolved_at: Option<Millis>,
    /// The verdict it was closed with.
    pub outcome: Option<Outcome>,
    /// Closed by the auto-resolver (quiet for the correlation window).
    pub auto_resolved: bool,
    /// Root cause given at resolve.
    pub root_cause: Option<String>,
    /// Anomaly events attached.
    pub anomaly_count: i64,
    /// Highest score among them.
    pub max_score: f64,
    /// Times it was reopened (by hand or by flapping).
    pub reopen_count: i64,
    /// Times an automatically resolved case came back within the flap window.
    pub flap_count: i64,
    /// Bumped by every change (optimistic concurrency and notification keys).
    pub version: i64,
}

/// One entry of a case's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Wall time.
    pub at: Millis,
    /// Who: a user, `system` (correlator, auto-resolver) or `cli:<user>`.
    pub actor: String,
    /// What: `opened`, `anomaly`, `escalated`, `acknowledge`, `comment`, ...
    pub action: String,
    /// Details (JSON).
    pub detail: serde_json::Value,
}

/// An anomaly attached to a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseAnomaly {
    /// The event id.
    pub event_id: String,
    /// Metric.
    pub metric: Option<String>,
    /// Event time.
    pub ts: Millis,
    /// Detector kind.
    pub kind: String,
    /// Score.
    pub score: f64,
    /// Model version.
    pub model_version: String,
    /// Explanation.
    pub explanation: serde_json::Value,
}

/// Evidence kept with a case (raw readings around the anomaly, so it outlives retention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// `readings` (a snapshot of raw rows) or another kind.
    pub kind: String,
    /// Wall time it was taken.
    pub created_at: Millis,
    /// The evidence (JSON).
    pub body: serde_json::Value,
}

/// A case with everything kept about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseDetail {
    /// The case.
    #[serde(flatten)]
    pub case: Case,
    /// Its anomalies, oldest first (at most the first 1,000).
    pub anomalies: Vec<CaseAnomaly>,
    /// Its timeline, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Its evidence.
    pub evidence: Vec<Evidence>,
}

/// Filters and pagination for listing cases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaseFilter {
    /// Only these states (empty: all).
    pub states: Vec<CaseState>,
    /// Only this severity or higher.
    pub min_severity: Option<Severity>,
    /// Only this device.
    pub device_id: Option<String>,
    /// Only this category.
    pub category: Option<Category>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Page size (default 50, at most 1,000).
    pub limit: Option<u32>,
    /// Continue after this cursor (from the previous page's `next`).
    pub after: Option<String>,
}

/// A page of cases, newest activity first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CasePage {
    /// The cases.
    pub cases: Vec<Case>,
    /// Cursor of the next page, when there is one.
    pub next: Option<String>,
}

/// What ingesting a batch of events did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// Events taken (not seen before).
    pub accepted: u64,
    /// Events already taken earlier (redelivery after a crash).
    pub duplicates: u64,
    /// Cases opened.
    pub opened: Vec<i64>,
    /// Automatically resolved cases brought back by flapping.
    pub reopened: Vec<i64>,
    /// Cases that got events.
    pub attached: Vec<i64>,
    /// Notifications enqueued.
    pub notifications: u64,
}

/// A labelled interval written when a case is resolved with a verdict. A case resolved again
/// after a reopen writes new labels; the latest per case and metric is the verdict (applied in
/// id order, a later `confirmed` undoes an earlier `false_positive`'s threshold raise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Sequence (increasing; consumers remember the last they took).
    pub id: i64,
    /// The case.
    pub case_id: i64,
    /// Device.
    pub device_id: String,
    /// Metric (`None`: the device as a whole).
    pub metric: Option<String>,
    /// Interval start (event time).
    pub start_ts: Millis,
    /// Interval end (event time).
    pub end_ts: Millis,
    /// `confirmed` or `false_positive`.
    pub label: String,
    /// The highest score of the metric's anomalies in the case.
    pub max_score: f64,
    /// Root cause given.
    pub root_cause: Option<String>,
    /// Who.
    pub actor: String,
    /// Wall time.
    pub created_at: Millis,
    /// The category of the case (only `anomaly` labels are detector feedback).
    pub category: Category,
}

/// A notification waiting in (or delivered from) the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Sequence.
    pub id: i64,
    /// The case.
    pub case_id: i64,
    /// Channel name (from config).
    pub channel: String,
    /// Receivers drop repeats with the same key.
    pub idempotency_key: String,
    /// `opened`, `escalated`, `reopened`, `resolved`.
    pub event: String,
    /// The notification body (JSON: event, case).
    pub payload: serde_json::Value,
    /// Wall time enqueued.
    pub created_at: Millis,
    /// Delivery attempts so far.
    pub attempts: i64,
}

/// Outbox counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStats {
    /// Not delivered yet.
    pub pending: i64,
    /// Of those, ones that failed at least once.
    pub failing: i64,
    /// Delivered.
    pub delivered: i64,
    /// Age of the oldest pending notification (ms).
    pub oldest_pending_ms: Option<i64>,
}
