//! Rule tables (feature `config`): which requests (method, path pattern) are limited, on which
//! key, by which limit, read from TOML or YAML, and reloaded live without losing bucket state.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderName, Method};
use serde::Deserialize;

use super::path_pattern::Pattern;

use super::{KeyExtractor, LayerError, Policy, RateLimitLayer, RateLimitLayerBuilder, RequestInfo};
use crate::http::Key;
use crate::{Inherit, KeyedLimiter, Limit};

/// A set of rules: each limits the requests it matches (methods, a path pattern) on its key.
/// Every rule that matches a request applies, all or nothing (as the [`Policy`]s of one layer:
/// each rule is one, named after it).
///
/// ```toml
/// [[rule]]
/// name = "login"          # the policy name (headers, metrics, logs)
/// methods = ["POST"]      # default: every method
/// path = "/login"         # exact; "/api/*": /api and everything under it;
///                         # "/users/{id}/posts": {name} or * is one segment
/// key = "ip"              # ip (the peer address) | api_key | bearer | global | header:<name>
/// limit = "5/minute"      # or "10/s burst 20", or { capacity = .., refill = .., interval = .. }
///
/// [[rule]]
/// name = "api"
/// path = "/api/*"
/// key = "api_key"
/// limit = "100/minute burst 20"
/// cost = 1                # tokens per request, default 1
/// shadow = false          # decide and count, refuse nothing; default false
/// ```
///
/// In YAML the list is `rules:`, with the same fields.
///
/// ```
/// use tollgate::http::RuleSet;
/// let rules = RuleSet::from_toml(r#"
///     [[rule]]
///     name = "api"
///     path = "/api/*"
///     key = "api_key"
///     limit = "100/minute"
/// "#)?;
/// let layer = rules.layer()?;
/// assert_eq!(layer.policies().collect::<Vec<_>>(), ["api"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RuleSet {
    rules: Mutex<Vec<RuleSpec>>,
    limiters: HashMap<String, Arc<KeyedLimiter<Key>>>,
}

/// One rule as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default = "any_path")]
    path: String,
    #[serde(default = "global_key")]
    key: String,
    limit: Limit,
    #[serde(default = "one")]
    cost: u64,
    #[serde(default)]
    shadow: bool,
}

fn any_path() -> String {
    "/*".to_string()
}

fn global_key() -> String {
    "global".to_string()
}

fn one() -> u64 {
    1
}

/// The file: a list of rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, alias = "rules")]
    rule: Vec<RuleSpec>,
}

/// Why a rule table was not loaded or reloaded (nothing changed).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Io(std::io::Error),
    /// Not valid TOML or YAML for a rule table (the parser's message names the place).
    Parse(String),
    /// A rule's field is wrong.
    Rule {
        /// The rule's name (or its position, `#n`, when the name is the problem).
        rule: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A reload changes more than limits and shadow modes (a rule added, removed, or with
    /// other methods, path, key or cost): that takes a new layer (a restart).
    NeedsRestart(Vec<String>),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Io(e) => write!(f, "cannot read the rule table: {e}"),
            ConfigError::Parse(e) => write!(f, "invalid rule table: {e}"),
            ConfigError::Rule {
                rule,
                field,
                problem,
            } => write!(f, "rule {rule:?}, field `{field}`: {problem}"),
            ConfigError::NeedsRestart(rules) => write!(
                f,
                "rules {rules:?} were added, removed, or changed in more than their limit or \
                 shadow mode: a live reload changes only those; build a new layer"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// Rules whose limit changed (their buckets keep their tokens, capped at a lower capacity).
    pub limits: Vec<String>,
    /// Rules whose shadow mode changed.
    pub shadow: Vec<String>,
}

impl RuleSet {
    /// Reads a rule table in TOML.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Rule`].
    pub fn from_toml(text: &str) -> Result<RuleSet, ConfigError> {
        RuleSet::new(parse_toml(text)?)
    }

    /// Reads a rule table in YAML (`rules:` a list of rules).
    ///
    /// ```
    /// use tollgate::http::RuleSet;
    /// let rules = RuleSet::from_yaml("rules:\n  - name: all\n    limit: 10/s burst 20\n")?;
    /// assert_eq!(rules.limit("all").unwrap().capacity(), 20);
    /// # Ok::<(), tollgate::http::ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Rule`].
    pub fn from_yaml(text: &str) -> Result<RuleSet, ConfigError> {
        RuleSet::new(parse_yaml(text)?)
    }

    /// Reads a rule table from a file: YAML for `.yaml` / `.yml`, TOML otherwise.
    ///
    /// ```
    /// use tollgate::http::{ConfigError, RuleSet};
    /// assert!(matches!(RuleSet::load("/nonexistent/rules.toml"), Err(ConfigError::Io(_))));
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Io`], [`ConfigError::Parse`] or [`ConfigError::Rule`].
    pub fn load(path: impl AsRef<Path>) -> Result<RuleSet, ConfigError> {
        RuleSet::new(read(path.as_ref())?)
    }

    fn new(rules: Vec<RuleSpec>) -> Result<RuleSet, ConfigError> {
        let limiters = rules
            .iter()
            .map(|r| (r.name.clone(), Arc::new(KeyedLimiter::new(r.limit))))
            .collect();
        Ok(RuleSet {
            rules: Mutex::new(rules),
            limiters,
        })
    }

    /// The limit rule `name` has now.
    ///
    /// ```
    /// use tollgate::http::RuleSet;
    /// let rules = RuleSet::from_toml("[[rule]]\nname = \"api\"\nlimit = \"100/minute\"\n")?;
    /// assert_eq!(rules.limit("api").unwrap().capacity(), 100);
    /// assert!(rules.limit("other").is_none());
    /// # Ok::<(), tollgate::http::ConfigError>(())
    /// ```
    pub fn limit(&self, name: &str) -> Option<Limit> {
        self.limiters.get(name).map(|l| l.limit())
    }

    /// The limiter of rule `name` (to read a key's bucket).
    ///
    /// ```
    /// use tollgate::http::{Key, RuleSet};
    /// let rules = RuleSet::from_toml("[[rule]]\nname = \"all\"\nlimit = \"10/s\"\n")?;
    /// assert_eq!(rules.limiter("all").unwrap().snapshot_key(&Key::Global).remaining(), 10);
    /// # Ok::<(), tollgate::http::ConfigError>(())
    /// ```
    pub fn limiter(&self, name: &str) -> Option<&Arc<KeyedLimiter<Key>>> {
        self.limiters.get(name)
    }

    /// A layer with one policy per rule, in the table's order.
    ///
    /// # Errors
    /// [`LayerError`] for a rule name that cannot be written in the headers.
    pub fn layer(&self) -> Result<RateLimitLayer<Arc<KeyedLimiter<Key>>>, LayerError> {
        self.builder()?.build()
    }

    /// A layer builder with one policy per rule, for more settings (headers, failure policy,
    /// metrics labels). A table without rules gives a layer whose one policy applies to
    /// nothing.
    ///
    /// ```
    /// use tollgate::http::{HeaderStyle, RuleSet};
    /// let rules = RuleSet::from_toml("[[rule]]\nname = \"api\"\nlimit = \"100/minute\"\n")?;
    /// let layer = rules.builder()?.headers(HeaderStyle::IetfAndLegacy).build()?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`LayerError`] for a rule name that cannot be written in the headers.
    pub fn builder(&self) -> Result<RateLimitLayerBuilder<Arc<KeyedLimiter<Key>>>, LayerError> {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut policies = rules.iter().map(|r| self.policy(r));
        let builder = match policies.next() {
            Some(first) => RateLimitLayer::from_policy(first),
            None => RateLimitLayer::from_policy(
                Policy::new(
                    "none",
                    Arc::new(KeyedLimiter::new(Limit::per_second(1).expect("valid"))),
                )
                .when(|_| false),
            ),
        };
        Ok(policies.fold(builder, |b, p| b.policy(p)))
    }

    fn policy(&self, rule: &RuleSpec) -> Policy<Arc<KeyedLimiter<Key>>> {
        let pattern = Pattern::new(&rule.path);
        let methods: Vec<Method> = rule
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .collect();
        let cost = rule.cost;
        Policy::new(rule.name.clone(), self.limiters[&rule.name].clone())
            .key(extractor(&rule.key).expect("checked when parsed"))
            .cost(move |_| cost)
            .shadow(rule.shadow)
            .when(move |req: &RequestInfo<'_>| {
                (methods.is_empty() || methods.contains(req.method))
                    && pattern.matches(req.uri.path())
            })
    }

    /// Applies a new version of the table to the limiters and `layer` (built from this set)
    /// while requests go on: changed limits through
    /// [`set_limit`](KeyedLimiter::set_limit) with [`Inherit::Keep`] (every key keeps its
    /// tokens, capped at a lower capacity), changed shadow modes through
    /// [`set_policy_shadow`](RateLimitLayer::set_policy_shadow). All or nothing: a table that
    /// adds, removes or reshapes a rule is refused as a whole, and nothing changes.
    ///
    /// ```
    /// use tollgate::http::RuleSet;
    /// let rules = RuleSet::from_toml("[[rule]]\nname = \"api\"\nlimit = \"100/minute\"\n")?;
    /// let layer = rules.layer()?;
    /// let changed = rules.reload_toml(&layer, "[[rule]]\nname = \"api\"\nlimit = \"50/minute\"\n")?;
    /// assert_eq!(changed.limits, ["api"]);
    /// assert_eq!(rules.limit("api").unwrap().capacity(), 50);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Parse`], [`ConfigError::Rule`] or [`ConfigError::NeedsRestart`].
    pub fn reload_toml(
        &self,
        layer: &RateLimitLayer<Arc<KeyedLimiter<Key>>>,
        text: &str,
    ) -> Result<Reloaded, ConfigError> {
        self.apply(layer, parse_toml(text)?)
    }

    /// [`reload_toml`](RuleSet::reload_toml) for YAML.
    ///
    /// # Errors
    /// As [`reload_toml`](RuleSet::reload_toml).
    pub fn reload_yaml(
        &self,
        layer: &RateLimitLayer<Arc<KeyedLimiter<Key>>>,
        text: &str,
    ) -> Result<Reloaded, ConfigError> {
        self.apply(layer, parse_yaml(text)?)
    }

    /// [`reload_toml`](RuleSet::reload_toml) from a file (YAML for `.yaml` / `.yml`).
    ///
    /// # Errors
    /// [`ConfigError::Io`], or as [`reload_toml`](RuleSet::reload_toml).
    pub fn reload_file(
        &self,
        layer: &RateLimitLayer<Arc<KeyedLimiter<Key>>>,
        path: impl AsRef<Path>,
    ) -> Result<Reloaded, ConfigError> {
        self.apply(layer, read(path.as_ref())?)
    }

    fn apply(
        &self,
        layer: &RateLimitLayer<Arc<KeyedLimiter<Key>>>,
        new: Vec<RuleSpec>,
    ) -> Result<Reloaded, ConfigError> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let shape = |r: &RuleSpec| {
            (
                r.name.clone(),
                r.methods.clone(),
                r.path.clone(),
                r.key.clone(),
                r.cost,
            )
        };
        let mut reshaped: Vec<String> = new
            .iter()
            .filter(|n| !rules.iter().any(|o| shape(o) == shape(n)))
            .map(|n| n.name.clone())
            .collect();
        reshaped.extend(
            rules
                .iter()
                .filter(|o| !new.iter().any(|n| n.name == o.name))
                .map(|o| o.name.clone()),
        );
        if !reshaped.is_empty() || new.len() != rules.len() {
            return Err(ConfigError::NeedsRestart(reshaped));
        }
        let mut done = Reloaded::default();
        for n in &new {
            let limiter = &self.limiters[&n.name];
            if limiter.limit() != n.limit {
                limiter.set_limit(n.limit, Inherit::Keep);
                done.limits.push(n.name.clone());
            }
            if layer.is_policy_shadow(&n.name) != Some(n.shadow)
                && layer.set_policy_shadow(&n.name, n.shadow).is_ok()
            {
                done.shadow.push(n.name.clone());
            }
        }
        *rules = new;
        Ok(done)
    }

    /// Watches `path`: every `period`, when the file's modification time or size changed,
    /// reloads it ([`reload_file`](RuleSet::reload_file)). A reload that fails is logged (a
    /// `tracing` warning) and changes nothing; the watch goes on. The thread stops when the
    /// returned [`RuleWatcher`] drops, or when the rules or the layer (every clone of it) are
    /// dropped: the watch holds neither alive.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tollgate::http::RuleSet;
    /// let path = std::env::temp_dir().join(format!("rules-doc-{}.toml", std::process::id()));
    /// std::fs::write(&path, "[[rule]]\nname = \"api\"\nlimit = \"100/minute\"\n")?;
    /// let rules = Arc::new(RuleSet::load(&path)?);
    /// let layer = rules.layer()?;
    /// let watcher = rules.watch(&layer, &path, Duration::from_secs(1))?;
    /// // .. serve with `layer`; edit the file; the limits follow ..
    /// drop(watcher);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// When the watch thread cannot be spawned.
    pub fn watch(
        self: &Arc<Self>,
        layer: &RateLimitLayer<Arc<KeyedLimiter<Key>>>,
        path: impl AsRef<Path>,
        period: Duration,
    ) -> std::io::Result<RuleWatcher> {
        let path = path.as_ref().to_path_buf();
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        let mut seen = stamp(&path);
        let rules = Arc::downgrade(self);
        // Weak: the watch must not keep the layer (and its evictor thread) alive.
        let layer = Arc::downgrade(&layer.config);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-rules".into())
            .spawn(move || loop {
                std::thread::park_timeout(period);
                // Relaxed: the flag alone is the message.
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (Some(rules), Some(config)) = (rules.upgrade(), layer.upgrade()) else {
                    break;
                };
                let layer = RateLimitLayer { config };
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match rules.reload_file(&layer, &path) {
                    Ok(done) => {
                        tracing::info!(?done, path = %path.display(), "rule table reloaded")
                    }
                    Err(error) => {
                        tracing::warn!(%error, path = %path.display(), "rule table not reloaded")
                    }
                }
            })?;
        Ok(RuleWatcher {
            stop,
            thread: thread.thread().clone(),
        })
    }
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("RuleSet").field("rules", &*rules).finish()
    }
}

/// The thread of [`RuleSet::watch`]; stops it when dropped.
#[derive(Debug)]
#[must_use = "dropping the watcher stops the watch at once"]
pub struct RuleWatcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::Thread,
}

impl Drop for RuleWatcher {
    fn drop(&mut self) {
        // Relaxed: see the watch loop.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.unpark();
    }
}

fn read(path: &Path) -> Result<Vec<RuleSpec>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(ConfigError::Io)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => parse_yaml(&text),
        _ => parse_toml(&text),
    }
}

fn parse_toml(text: &str) -> Result<Vec<RuleSpec>, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    check(file.rule)
}

fn parse_yaml(text: &str) -> Result<Vec<RuleSpec>, ConfigError> {
    let file: File =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    check(file.rule)
}

/// Checks every rule's fields.
fn check(rules: Vec<RuleSpec>) -> Result<Vec<RuleSpec>, ConfigError> {
    let wrong = |rule: &str, field, problem: String| ConfigError::Rule {
        rule: rule.to_string(),
        field,
        problem,
    };
    for (i, r) in rules.iter().enumerate() {
        if r.name.is_empty() || !r.name.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
            return Err(wrong(
                &format!("#{}", i + 1),
                "name",
                format!("{:?}: a name is printable ASCII, not empty", r.name),
            ));
        }
        if rules[..i].iter().any(|o| o.name == r.name) {
            return Err(wrong(&r.name, "name", "two rules have this name".into()));
        }
        for m in &r.methods {
            if Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                return Err(wrong(&r.name, "methods", format!("{m:?} is not a method")));
            }
        }
        if !r.path.starts_with('/') {
            return Err(wrong(
                &r.name,
                "path",
                format!("{:?}: a path pattern starts with /", r.path),
            ));
        }
        if let Err(problem) = extractor(&r.key) {
            return Err(wrong(&r.name, "key", problem));
        }
        if r.cost > r.limit.capacity() {
            return Err(wrong(
                &r.name,
                "cost",
                format!(
                    "{} is above the limit's capacity {}: no request could pass",
                    r.cost,
                    r.limit.capacity()
                ),
            ));
        }
    }
    Ok(rules)
}

/// The key extractor a rule names.
fn extractor(key: &str) -> Result<KeyExtractor, String> {
    Ok(match key {
        "global" => KeyExtractor::global(),
        "ip" => KeyExtractor::peer_ip(),
        "api_key" => KeyExtractor::api_key(),
        "bearer" => KeyExtractor::bearer(),
        _ => match key.strip_prefix("header:") {
            Some(name) => KeyExtractor::header(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("{name:?} is not a header name"))?,
            ),
            None => {
                return Err(format!(
                    "{key:?}: one of global, ip, api_key, bearer, header:<name>"
                ))
            }
        },
    })
}
