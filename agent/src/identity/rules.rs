//! Standalone model identity: rules that name the model a process serves from its executable
//! name, command line and cgroup path, with built-in rules for common model servers.
//!
//! Outside Kubernetes no pod metadata names a model, so the agent looks at the process itself. A
//! rule (YAML under `standalone.rules`) matches by executable name, command-line regex and cgroup
//! glob (every one that is set must match) and names a model and version with templates that may
//! use the regex's capture groups. User rules come first, in order, then the built-ins that no user
//! rule replaces or disables; the first rule that names a model wins. Command lines and cgroup
//! names are chosen by whoever starts the process, so nothing here may panic on any input.

use std::{collections::HashSet, sync::Arc};

use regex::{Captures, Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// The longest command line a regex sees: the arguments joined by single spaces, cut at a char
/// boundary. Servers put their model flags near the front; this bounds the work per process.
pub const MAX_CMDLINE_BYTES: usize = 4096;

/// The longest model or version label, cut at a char boundary.
pub const MAX_LABEL_BYTES: usize = 128;

/// `comm` holds at most this many bytes (TASK_COMM_LEN 16 with its NUL), see `include/linux/sched.h`.
const COMM_BYTES: usize = 15;

/// One rule as written in YAML under `standalone.rules`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in errors and in `top`. A user rule with a built-in's name replaces it.
    pub name: String,
    /// The executable's file name (of `/proc/PID/exe`, else `comm`), matched exactly. A 15-byte
    /// `comm` (the kernel's limit) also matches a longer name it begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// A regex over the command line, its arguments joined by single spaces (the first 4096 bytes).
    /// Unanchored unless it anchors itself; `.` also matches a newline inside an argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// A glob over the cgroup path (`/system.slice/my-model.service`): `*` any run within a path
    /// segment, `?` one character, `**` as a whole segment any number of segments, so
    /// `/system.slice/my-model.service/**` also covers the service's sub-cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The model name: text with `$1`, `${1}` or `${name}` for the `cmdline` regex's capture groups
    /// and `$$` for a literal `$`. A file path (`/models/llama.gguf`) becomes its file name without
    /// a `.gguf`, `.bin` or `.safetensors` extension. Expanding to nothing means the rule does not
    /// match, and the next one is tried. May be left out only when `disabled`.
    #[serde(default)]
    pub model: String,
    /// The model version, same syntax. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Switches the rule off; with a built-in's name and no matcher, switches that built-in off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// What a rule looks at, as the caller read it from /proc and the cgroup filesystem (non-UTF-8
/// bytes already converted lossily).
#[derive(Debug, Clone, Copy)]
pub struct ProcessFacts<'a> {
    /// The executable's file name (a full path is tolerated: only the part after the last `/` counts).
    pub exe: &'a str,
    /// The arguments, as split at NULs in `/proc/PID/cmdline`.
    pub cmdline: &'a [String],
    /// The cgroup path relative to the cgroup mount root.
    pub cgroup: &'a str,
}

/// The model a rule found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The rule's name.
    pub rule: Arc<str>,
    pub model: String,
    /// Empty when the rule gives no version.
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule {index} has an empty `name`")]
    NoName { index: usize },
    #[error("rule `{rule}` is defined twice")]
    Duplicate { rule: String },
    #[error("rule `{rule}` has no matcher: set at least one of `exe`, `cmdline` and `cgroup`")]
    NoMatcher { rule: String },
    #[error("rule `{rule}` disables nothing: no built-in rule has that name")]
    UnknownBuiltin { rule: String },
    #[error("rule `{rule}`: `exe` {message}")]
    Exe { rule: String, message: &'static str },
    // The regex error is part of the message, not a source: config errors carry one message.
    #[error("rule `{rule}`: `cmdline` is not a valid regex: {error}")]
    Regex { rule: String, error: regex::Error },
    #[error("rule `{rule}`: `cgroup` {message}")]
    Glob { rule: String, message: &'static str },
    #[error("rule `{rule}`: `{field}` {message}")]
    Template { rule: String, field: &'static str, message: String },
    #[error("rule `{rule}`: `model` is empty")]
    EmptyModel { rule: String },
}

/// A built-in rule, with a line saying what it recognises (for the README and `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    pub name: &'static str,
    pub cmdline: &'static str,
    pub model: &'static str,
    pub version: Option<&'static str>,
    pub description: &'static str,
}

/// Start of a built-in's regex: the server is argv[0], or the script or `-m` module after a Python
/// interpreter and its flags (`/usr/bin/python3 /usr/local/bin/vllm serve …`, `python3 -u -m
/// sglang.launch_server …`: that is how the kernel runs console scripts). Anchored, so that
/// `pgrep -f tritonserver` or `grep "vllm serve"` is not a server.
macro_rules! prog {
    () => {
        r"^(?:\S*/)?(?:python[^\s/]*\s+(?:-\S+\s+)*(?:\S*/)?)?"
    };
}

/// `--revision REV` anywhere after the model, as the version.
macro_rules! revision {
    () => {
        r"(?:\s(?:.*\s)?--revision[= ](?P<revision>\S+))?"
    };
}

/// TorchServe's real server: the JVM that the `torchserve` script starts.
macro_rules! torchserve_jvm {
    () => {
        r"^(?:\S*/)?java\s(?:.*\s)?org\.pytorch\.serve\.ModelServer"
    };
}

/// The built-in rules, in the order they are tried (after the user's). A flag's value is taken
/// from its last occurrence (argparse and clap keep the last), as `--flag VALUE` or `--flag=VALUE`;
/// a rule naming the served name comes before the one naming the weights, and a rule naming just
/// the server (for a model given in a config file or the environment) comes last.
pub static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "vllm-served-model-name",
        cmdline: concat!(
            prog!(),
            r"(?:vllm\s+serve|vllm\.entrypoints\.(?:openai\.)?api_server)\s(?:.*\s)?--served-model-name[= ](?P<name>[^-\s]\S*)",
            revision!()
        ),
        model: "${name}",
        version: Some("${revision}"),
        description: "vLLM with `--served-model-name NAME` (the name clients use; the first if several)",
    },
    Builtin {
        name: "vllm",
        cmdline: concat!(
            prog!(),
            r"(?:vllm\s+serve|vllm\.entrypoints\.(?:openai\.)?api_server)\s(?:\s*|(?:.*\s)?--model[= ])(?P<model>[^-\s]\S*)",
            revision!()
        ),
        model: "${model}",
        version: Some("${revision}"),
        description: "vLLM: `vllm serve MODEL`, or `--model MODEL` (`python -m vllm.entrypoints.openai.api_server`)",
    },
    Builtin {
        name: "vllm-server",
        cmdline: concat!(prog!(), r"(?:vllm\s+serve|vllm\.entrypoints\.(?:openai\.)?api_server)(?:\s|$)"),
        model: "vllm",
        version: None,
        description: "vLLM with its model elsewhere (`--config FILE`): model `vllm`",
    },
    Builtin {
        name: "tgi-served-model-name",
        cmdline: concat!(
            prog!(),
            r"text-generation-launcher\s(?:.*\s)?--served-model-name[= ](?P<name>[^-\s]\S*)",
            revision!()
        ),
        model: "${name}",
        version: Some("${revision}"),
        description: "Text Generation Inference with `--served-model-name NAME`",
    },
    Builtin {
        name: "tgi",
        cmdline: concat!(
            prog!(),
            r"(?:text-generation-launcher\s(?:.*\s)?--model-id[= ]|text-generation-server\s+serve\s+)(?P<model>[^-\s]\S*)",
            revision!()
        ),
        model: "${model}",
        version: Some("${revision}"),
        description: "Text Generation Inference: `text-generation-launcher --model-id MODEL`, and its shards \
            (`text-generation-server serve MODEL`)",
    },
    Builtin {
        name: "tgi-server",
        cmdline: concat!(prog!(), r"text-generation-launcher(?:\s|$)"),
        model: "text-generation-inference",
        version: None,
        description: "Text Generation Inference with its model in `MODEL_ID`: model `text-generation-inference`",
    },
    Builtin {
        name: "tei",
        cmdline: concat!(prog!(), r"text-embeddings-router\s(?:.*\s)?--model-id[= ](?P<model>[^-\s]\S*)", revision!()),
        model: "${model}",
        version: Some("${revision}"),
        description: "Text Embeddings Inference: `text-embeddings-router --model-id MODEL`",
    },
    Builtin {
        name: "tei-server",
        cmdline: concat!(prog!(), r"text-embeddings-router(?:\s|$)"),
        model: "text-embeddings-inference",
        version: None,
        description: "Text Embeddings Inference with its model in `MODEL_ID`: model `text-embeddings-inference`",
    },
    Builtin {
        name: "sglang-served-model-name",
        cmdline: concat!(
            prog!(),
            r"(?:sglang|sglang_router)\.launch_server\s(?:.*\s)?--served-model-name[= ](?P<name>[^-\s]\S*)",
            revision!()
        ),
        model: "${name}",
        version: Some("${revision}"),
        description: "SGLang with `--served-model-name NAME`",
    },
    Builtin {
        name: "sglang",
        cmdline: concat!(
            prog!(),
            r"(?:sglang|sglang_router)\.launch_server\s(?:.*\s)?--model(?:-path)?[= ](?P<model>[^-\s]\S*)",
            revision!()
        ),
        model: "${model}",
        version: Some("${revision}"),
        description: "SGLang: `python -m sglang.launch_server --model-path MODEL` (or `--model`, or `sglang_router`)",
    },
    Builtin {
        name: "sglang-server",
        cmdline: concat!(prog!(), r"(?:sglang|sglang_router)\.launch_server(?:\s|$)"),
        model: "sglang",
        version: None,
        description: "SGLang with its model elsewhere (`--config FILE`): model `sglang`",
    },
    Builtin {
        name: "llama-cpp-alias",
        cmdline: concat!(
            prog!(),
            r"(?:llama-server|llama_cpp\.server)\s(?:.*\s)?(?:-a|--alias|--model_alias)[= ](?P<alias>[^-\s]\S*)"
        ),
        model: "${alias}",
        version: None,
        description: "llama.cpp with the name clients use: `llama-server --alias NAME`, \
            `python -m llama_cpp.server --model_alias NAME`",
    },
    Builtin {
        name: "llama-cpp",
        cmdline: concat!(
            prog!(),
            r"(?:llama-server|llama_cpp\.server)\s(?:.*\s)?(?:-m|--model|-hf|-hfr|--hf-repo)[= ](?P<model>[^-\s]\S*)"
        ),
        model: "${model}",
        version: None,
        description: "llama.cpp: `llama-server -m PATH` (or `--model`, or `-hf REPO`), \
            `python -m llama_cpp.server --model PATH`",
    },
    Builtin {
        name: "llama-cpp-server",
        cmdline: concat!(prog!(), r"(?:llama-server|llama_cpp\.server)(?:\s|$)"),
        model: "llama.cpp",
        version: None,
        description: "llama.cpp with its model in the environment or a models directory: model `llama.cpp`",
    },
    Builtin {
        name: "ollama",
        cmdline: concat!(prog!(), r"ollama\s+serve(?:\s|$)"),
        model: "ollama",
        version: None,
        description: "`ollama serve`: model `ollama` (it serves many; its runners are its children)",
    },
    Builtin {
        name: "triton",
        cmdline: concat!(prog!(), r"tritonserver(?:\s|$)"),
        model: "tritonserver",
        version: None,
        description: "NVIDIA Triton `tritonserver`: model `tritonserver` (it serves every model of its repository)",
    },
    Builtin {
        name: "torchserve",
        cmdline: concat!(
            "(?:",
            prog!(),
            "torchserve|",
            torchserve_jvm!(),
            r")\s(?:.*\s)?(?:--models|-m)[= ](?:all(?:\s|$)|(?P<model>[^-\s=][^\s=]*?)(?:\.mar)?(?:[=\s]|$))"
        ),
        model: "${model}",
        version: None,
        description: "TorchServe: the first of `--models NAME=FILE.mar` (or `FILE.mar`), on `torchserve --start` \
            and its JVM (`org.pytorch.serve.ModelServer -m …`)",
    },
    Builtin {
        name: "torchserve-server",
        cmdline: concat!("(?:", prog!(), r"torchserve\s(?:.*\s)?--start|", torchserve_jvm!(), r")(?:\s|$)"),
        model: "torchserve",
        version: None,
        description: "TorchServe with `--models all` or none: model `torchserve`",
    },
    Builtin {
        name: "tf-serving",
        cmdline: concat!(prog!(), r"tensorflow_model_server\s(?:.*\s)?--model_name[= ](?P<model>[^-\s]\S*)"),
        model: "${model}",
        version: None,
        description: "TensorFlow Serving: `tensorflow_model_server --model_name=NAME`",
    },
    Builtin {
        name: "tf-serving-server",
        cmdline: concat!(prog!(), r"tensorflow_model_server(?:\s|$)"),
        model: "tensorflow-serving",
        version: None,
        description: "TensorFlow Serving with `--model_config_file`: model `tensorflow-serving`",
    },
    Builtin {
        name: "lmdeploy",
        cmdline: concat!(prog!(), r"lmdeploy\s+serve\s+api_server\s+(?P<model>[^-\s]\S*)", revision!()),
        model: "${model}",
        version: Some("${revision}"),
        description: "LMDeploy: `lmdeploy serve api_server MODEL`",
    },
    Builtin {
        name: "mlserver",
        cmdline: concat!(prog!(), r"mlserver\s+start(?:\s|$)"),
        model: "mlserver",
        version: None,
        description: "Seldon MLServer `mlserver start DIR`: model `mlserver` (its models are in `model-settings.json`)",
    },
    Builtin {
        name: "uvicorn",
        cmdline: concat!(prog!(), r"uvicorn\s(?:.*\s)?(?P<module>[A-Za-z_][\w.]*):[A-Za-z_][\w.]*(?:\(\))?(?:\s|$)"),
        model: "${module}",
        version: None,
        description: "An ASGI app under uvicorn (`uvicorn app.main:app`, `python -m uvicorn …`): \
            the app's module, `app.main`",
    },
];

/// The rules in the order they are tried.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Compiled>,
    /// Whether any rule reads the command line or the cgroup, so that neither is prepared for nothing.
    uses_cmdline: bool,
    uses_cgroup: bool,
}

impl Rules {
    /// User rules first (in order), then the built-ins that no user rule names (replacing or
    /// disabling it); `builtins: false` leaves the built-ins out. Errors name the rule and say what
    /// is wrong. A disabled user rule is not compiled; without a matcher it must name a built-in.
    pub fn compile(user: &[RuleConfig], builtins: bool) -> Result<Rules, RuleError> {
        let mut names = HashSet::new();
        for (index, rule) in user.iter().enumerate() {
            if rule.name.trim().is_empty() {
                return Err(RuleError::NoName { index });
            }
            if !names.insert(rule.name.as_str()) {
                return Err(RuleError::Duplicate { rule: rule.name.clone() });
            }
        }
        let mut rules = Vec::new();
        for rule in user {
            if !rule.disabled {
                rules.push(Compiled::new(rule)?);
            } else if !has_matcher(rule) && !BUILTINS.iter().any(|b| b.name == rule.name) {
                return Err(RuleError::UnknownBuiltin { rule: rule.name.clone() });
            }
        }
        if builtins {
            for rule in Self::builtin() {
                if !names.contains(rule.name.as_str()) {
                    rules.push(Compiled::new(&rule)?);
                }
            }
        }
        let uses_cmdline = rules.iter().any(|r| r.cmdline.is_some());
        let uses_cgroup = rules.iter().any(|r| r.cgroup.is_some());
        Ok(Rules { rules, uses_cmdline, uses_cgroup })
    }

    /// The built-in rules as configuration, in the order they are tried.
    pub fn builtin() -> Vec<RuleConfig> {
        BUILTINS
            .iter()
            .map(|b| RuleConfig {
                name: b.name.to_owned(),
                exe: None,
                cmdline: Some(b.cmdline.to_owned()),
                cgroup: None,
                model: b.model.to_owned(),
                version: b.version.map(str::to_owned),
                disabled: false,
            })
            .collect()
    }

    /// Each built-in's name and what it recognises.
    pub fn describe_builtins() -> Vec<(&'static str, &'static str)> {
        BUILTINS.iter().map(|b| (b.name, b.description)).collect()
    }

    /// The compiled rules' names, in the order they are tried.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// The first rule whose every matcher that is set matches (exe, cmdline and cgroup) and whose
    /// model template expands to a model name.
    pub fn match_process(&self, facts: &ProcessFacts<'_>) -> Option<Matched> {
        let cmdline = if self.uses_cmdline { join_cmdline(facts.cmdline) } else { String::new() };
        let cgroup = if self.uses_cgroup { path_segments(facts.cgroup) } else { Vec::new() };
        self.rules.iter().find_map(|rule| rule.apply(facts.exe, &cmdline, &cgroup))
    }
}

fn has_matcher(rule: &RuleConfig) -> bool {
    rule.exe.is_some() || rule.cmdline.is_some() || rule.cgroup.is_some()
}

/// One rule, ready to match.
#[derive(Debug, Clone)]
struct Compiled {
    name: Arc<str>,
    exe: Option<String>,
    cmdline: Option<Regex>,
    cgroup: Option<Glob>,
    model: Template,
    version: Option<Template>,
    /// Whether a template reads capture groups (else a cheaper `is_match` is enough).
    captures: bool,
}

impl Compiled {
    fn new(rule: &RuleConfig) -> Result<Compiled, RuleError> {
        let name = &rule.name;
        if !has_matcher(rule) {
            return Err(RuleError::NoMatcher { rule: name.clone() });
        }
        if let Some(exe) = &rule.exe {
            let message = if exe.is_empty() {
                Some("is empty")
            } else if exe.contains('/') {
                Some("is matched against the executable's file name: write `ollama`, not a path")
            } else {
                None
            };
            if let Some(message) = message {
                return Err(RuleError::Exe { rule: name.clone(), message });
            }
        }
        let cmdline = match &rule.cmdline {
            Some(pattern) => Some(
                RegexBuilder::new(pattern)
                    .dot_matches_new_line(true)
                    .build()
                    .map_err(|error| RuleError::Regex { rule: name.clone(), error })?,
            ),
            None => None,
        };
        let cgroup = match &rule.cgroup {
            Some(glob) => Some(Glob::parse(glob).map_err(|message| RuleError::Glob { rule: name.clone(), message })?),
            None => None,
        };
        if rule.model.trim().is_empty() {
            return Err(RuleError::EmptyModel { rule: name.clone() });
        }
        let template = |field: &'static str, text: &str| {
            Template::parse(text, cmdline.as_ref()).map_err(|message| RuleError::Template {
                rule: name.clone(),
                field,
                message,
            })
        };
        let model = template("model", &rule.model)?;
        let version = rule.version.as_deref().map(|v| template("version", v)).transpose()?;
        let captures = model.uses_groups() || version.as_ref().is_some_and(Template::uses_groups);
        Ok(Compiled { name: name.as_str().into(), exe: rule.exe.clone(), cmdline, cgroup, model, version, captures })
    }

    fn apply(&self, exe: &str, cmdline: &str, cgroup: &[Vec<char>]) -> Option<Matched> {
        if let Some(want) = &self.exe
            && !exe_matches(want, exe)
        {
            return None;
        }
        if let Some(glob) = &self.cgroup
            && !glob.matches(cgroup)
        {
            return None;
        }
        let captures = match &self.cmdline {
            Some(regex) if self.captures => Some(regex.captures(cmdline)?),
            Some(regex) if !regex.is_match(cmdline) => return None,
            _ => None,
        };
        let model = model_label(&self.model.expand(captures.as_ref()));
        if model.is_empty() {
            return None;
        }
        let version = self.version.as_ref().map(|v| version_label(&v.expand(captures.as_ref()))).unwrap_or_default();
        Some(Matched { rule: self.name.clone(), model, version })
    }
}

/// `want` is the whole file name, or `exe` is a full-length `comm` that `want` begins.
fn exe_matches(want: &str, exe: &str) -> bool {
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
    let base = exe.rsplit('/').next().unwrap_or(exe);
    base == want || (base.len() == COMM_BYTES && want.starts_with(base))
}

/// The arguments joined by single spaces, at most `MAX_CMDLINE_BYTES`.
fn join_cmdline(args: &[String]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if out.len() >= MAX_CMDLINE_BYTES {
            break;
        }
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&arg[..arg.floor_char_boundary(MAX_CMDLINE_BYTES - out.len())]);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Group(usize),
}

/// A model or version template, its group references resolved to indices when compiled.
#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(text: &str, regex: Option<&Regex>) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (group, len) = if let Some(after_dollar) = after.strip_prefix('$') {
                literal.push('$');
                rest = after_dollar;
                continue;
            } else if let Some(inner) = after.strip_prefix('{') {
                let end = inner.find('}').ok_or_else(|| "has a `${` without its `}`".to_owned())?;
                (&inner[..end], end + 2)
            } else {
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 {
                    return Err(
                        "has a `$` that starts no group: write `$1`, `${1}` or `${name}`, or `$$` for a `$`".to_owned()
                    );
                }
                (&after[..digits], digits)
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Group(group_index(group, regex)?));
            rest = &after[len..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    fn uses_groups(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Group(_)))
    }

    /// A group that did not take part in the match expands to nothing.
    fn expand(&self, captures: Option<&Captures<'_>>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Group(i) => out.push_str(captures.and_then(|c| c.get(*i)).map_or("", |m| m.as_str())),
            }
        }
        out
    }
}

/// The index of group `group` (a number or a name) of `regex`.
fn group_index(group: &str, regex: Option<&Regex>) -> Result<usize, String> {
    if group.is_empty() {
        return Err("has an empty `${}`".to_owned());
    }
    let Some(regex) = regex else {
        return Err(format!("refers to group `{group}`, but the rule has no `cmdline` regex"));
    };
    if group.bytes().all(|b| b.is_ascii_digit()) {
        let groups = regex.captures_len() - 1;
        return match group.parse::<usize>() {
            Ok(i) if i <= groups => Ok(i),
            _ => Err(format!("refers to group {group}, but the `cmdline` regex has {groups} group(s)")),
        };
    }
    regex
        .capture_names()
        .position(|name| name == Some(group))
        .ok_or_else(|| format!("refers to group `{group}`, which the `cmdline` regex does not define"))
}

/// The label for a model as a server was given it: a Hugging Face id stays as written
/// (`meta-llama/Llama-3.1-8B-Instruct`); a path or URL (starting with `/`, `./`, `../` or `~`,
/// containing `://`, or with more than one `/`) gives its last component; a `.gguf`, `.bin` or
/// `.safetensors` extension goes. At most `MAX_LABEL_BYTES`; empty when nothing is left.
pub fn model_label(raw: &str) -> String {
    let name = unquote(raw).trim_end_matches('/');
    let is_path = name.starts_with(['/', '~'])
        || name.starts_with("./")
        || name.starts_with("../")
        || name.contains("://")
        || name.matches('/').count() > 1;
    let name = if is_path { name.rsplit('/').next().unwrap_or_default() } else { name };
    if matches!(name, "." | ".." | "~") {
        return String::new();
    }
    let name = [".gguf", ".bin", ".safetensors"]
        .iter()
        .find_map(|ext| {
            let stem = name.len().checked_sub(ext.len()).and_then(|at| name.get(..at))?;
            (!stem.is_empty() && name[stem.len()..].eq_ignore_ascii_case(ext)).then_some(stem)
        })
        .unwrap_or(name);
    name[..name.floor_char_boundary(MAX_LABEL_BYTES)].to_owned()
}

fn version_label(raw: &str) -> String {
    let version = unquote(raw);
    version[..version.floor_char_boundary(MAX_LABEL_BYTES)].to_owned()
}

/// Trims whitespace and one pair of surrounding quotes (a shell wrapper's `sh -c "… 'MODEL'"`).
fn unquote(raw: &str) -> &str {
    let s = raw.trim();
    ['"', '\''].iter().find_map(|q| s.strip_prefix(*q).and_then(|s| s.strip_suffix(*q))).map_or(s, str::trim)
}

/// The non-empty segments of a cgroup path, as characters for the glob.
fn path_segments(path: &str) -> Vec<Vec<char>> {
    path.split('/').filter(|s| !s.is_empty()).map(|s| s.chars().collect()).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, none included.
    Any,
    Pattern(Vec<GlobChar>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobChar {
    /// `*`: any run of characters within the segment.
    Star,
    /// `?`: one character.
    One,
    Literal(char),
}

/// A cgroup path glob; leading, trailing and repeated `/` don't matter, as in the paths.
#[derive(Debug, Clone)]
struct Glob(Vec<Segment>);

impl Glob {
    fn parse(glob: &str) -> Result<Glob, &'static str> {
        if glob.trim().is_empty() {
            return Err("is empty");
        }
        let mut segments = Vec::new();
        for segment in glob.split('/').filter(|s| !s.is_empty()) {
            if segment == "**" {
                segments.push(Segment::Any);
            } else if segment.contains("**") {
                return Err("has `**` inside a path segment: it stands alone (`/a/**/b`); `*` matches within one");
            } else {
                let chars = segment.chars().map(|c| match c {
                    '*' => GlobChar::Star,
                    '?' => GlobChar::One,
                    c => GlobChar::Literal(c),
                });
                segments.push(Segment::Pattern(chars.collect()));
            }
        }
        Ok(Glob(segments))
    }

    fn matches(&self, path: &[Vec<char>]) -> bool {
        wildcard(
            &self.0,
            path,
            |s| *s == Segment::Any,
            |segment, text| match segment {
                Segment::Any => false,
                Segment::Pattern(chars) => wildcard(
                    chars,
                    text,
                    |c| *c == GlobChar::Star,
                    |c, t| match c {
                        GlobChar::Star => false,
                        GlobChar::One => true,
                        GlobChar::Literal(l) => l == t,
                    },
                ),
            },
        )
    }
}

/// Matches `text` against `pattern`, where star items match any run of items and the others one
/// item each. Greedy with one backtrack point (the last star): correct because a later star can
/// absorb whatever an earlier choice leaves, and at most O(pattern × text) steps.
fn wildcard<P, T>(pattern: &[P], text: &[T], is_star: impl Fn(&P) -> bool, one: impl Fn(&P, &T) -> bool) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && one(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star, from)) = backtrack {
            // Let the last star take one more item and retry after it.
            backtrack = Some((star, from + 1));
            p = star + 1;
            t = from + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    fn facts<'a>(exe: &'a str, cmdline: &'a [String], cgroup: &'a str) -> ProcessFacts<'a> {
        ProcessFacts { exe, cmdline, cgroup }
    }

    fn builtins() -> Rules {
        Rules::compile(&[], true).unwrap()
    }

    /// (rule, model, version) for a command line under the built-ins; exe as a Python console
    /// script or binary would give it.
    fn matched(rules: &Rules, args: &[&str]) -> Option<(String, String, String)> {
        let cmdline = argv(args);
        let exe = args.first().map_or("", |a| a.rsplit('/').next().unwrap_or(*a));
        rules.match_process(&facts(exe, &cmdline, "/system.slice/model.service")).map(|m| {
            let Matched { rule, model, version } = m;
            (rule.to_string(), model, version)
        })
    }

    fn rule(name: &str, cmdline: Option<&str>, model: &str) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            exe: None,
            cmdline: cmdline.map(str::to_owned),
            cgroup: None,
            model: model.into(),
            version: None,
            disabled: false,
        }
    }

    /// Checks `(command line, [rule, model, version])` under the built-ins. The command line is
    /// split at spaces into argv, as /proc/PID/cmdline gives it (none of these arguments has one).
    #[track_caller]
    fn check(cases: &[(&str, [&str; 3])]) {
        let rules = builtins();
        for (cmdline, [rule, model, version]) in cases {
            let args: Vec<&str> = cmdline.split(' ').collect();
            let want = Some((rule.to_string(), model.to_string(), version.to_string()));
            assert_eq!(matched(&rules, &args), want, "{cmdline}");
        }
    }

    #[test]
    fn builtins_compile_with_unique_names_and_descriptions() {
        let rules = builtins();
        assert_eq!(rules.names().count(), BUILTINS.len());
        let names: HashSet<_> = BUILTINS.iter().map(|b| b.name).collect();
        assert_eq!(names.len(), BUILTINS.len());
        assert!(Rules::describe_builtins().iter().all(|(_, d)| !d.is_empty()));
        assert!(Rules::builtin().iter().all(|r| r.cmdline.is_some() && !r.model.is_empty()));
    }

    const LLAMA: &str = "meta-llama/Llama-3.1-8B-Instruct";

    #[test]
    fn vllm() {
        check(&[
            (
                "/usr/bin/python3 /usr/local/bin/vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000",
                ["vllm", LLAMA, ""],
            ),
            (
                "vllm serve Qwen/Qwen3-8B --tensor-parallel-size 2 --revision a1b2c3",
                ["vllm", "Qwen/Qwen3-8B", "a1b2c3"],
            ),
            (
                "/opt/venv/bin/python3.12 /opt/venv/bin/vllm serve /models/Qwen2.5-7B-Instruct/ --revision=main",
                ["vllm", "Qwen2.5-7B-Instruct", "main"],
            ),
            (
                "python3 -m vllm.entrypoints.openai.api_server --model mistralai/Mistral-7B-Instruct-v0.3 --dtype auto",
                ["vllm", "mistralai/Mistral-7B-Instruct-v0.3", ""],
            ),
            (
                "/usr/bin/python3 -u -m vllm.entrypoints.openai.api_server --port 8000 --model=facebook/opt-125m",
                ["vllm", "facebook/opt-125m", ""],
            ),
            ("vllm serve --model facebook/opt-125m", ["vllm", "facebook/opt-125m", ""]),
            ("python -m vllm.entrypoints.api_server --model facebook/opt-125m", ["vllm", "facebook/opt-125m", ""]),
            // The served name is what clients ask for.
            (
                "/usr/bin/python3 /usr/local/bin/vllm serve /models/llama-3.1-8b/ --served-model-name llama --revision v2",
                ["vllm-served-model-name", "llama", "v2"],
            ),
            (
                "python3 -m vllm.entrypoints.openai.api_server --served-model-name=chat --model=/m/x",
                ["vllm-served-model-name", "chat", ""],
            ),
            ("vllm serve m/x --served-model-name a b", ["vllm-served-model-name", "a", ""]),
            ("/usr/bin/python3 /usr/local/bin/vllm serve --config /etc/vllm.yaml", ["vllm-server", "vllm", ""]),
            ("vllm serve", ["vllm-server", "vllm", ""]),
        ]);
    }

    #[test]
    fn text_generation_inference_and_embeddings() {
        let zephyr = "HuggingFaceH4/zephyr-7b-beta";
        check(&[
            (
                "text-generation-launcher --model-id HuggingFaceH4/zephyr-7b-beta --revision b70e0c9 --num-shard 1 --port 80",
                ["tgi", zephyr, "b70e0c9"],
            ),
            (
                "/usr/local/bin/text-generation-launcher --port 8080 --model-id=bigscience/bloom-560m",
                ["tgi", "bigscience/bloom-560m", ""],
            ),
            // The launcher's shard, a Python console script.
            (
                "/opt/conda/bin/python3.11 /opt/conda/bin/text-generation-server serve bigscience/bloom-560m --uds-path /tmp/text-generation-server --logger-level INFO --json-output",
                ["tgi", "bigscience/bloom-560m", ""],
            ),
            (
                "text-generation-launcher --model-id /data/models/zephyr --served-model-name zephyr",
                ["tgi-served-model-name", "zephyr", ""],
            ),
            ("text-generation-launcher --port 80", ["tgi-server", "text-generation-inference", ""]),
            ("text-generation-launcher", ["tgi-server", "text-generation-inference", ""]),
            (
                "text-embeddings-router --model-id BAAI/bge-large-en-v1.5 --port 80",
                ["tei", "BAAI/bge-large-en-v1.5", ""],
            ),
            (
                "/usr/local/bin/text-embeddings-router --model-id=BAAI/bge-m3 --revision=refs/pr/5",
                ["tei", "BAAI/bge-m3", "refs/pr/5"],
            ),
            ("text-embeddings-router --port 80", ["tei-server", "text-embeddings-inference", ""]),
        ]);
    }

    #[test]
    fn sglang_and_lmdeploy() {
        check(&[
            (
                "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --host 0.0.0.0 --port 30000",
                ["sglang", LLAMA, ""],
            ),
            (
                "/usr/bin/python3 -m sglang.launch_server --model=Qwen/Qwen2.5-7B-Instruct --revision r1",
                ["sglang", "Qwen/Qwen2.5-7B-Instruct", "r1"],
            ),
            (
                "python -m sglang_router.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --dp-size 2",
                ["sglang", LLAMA, ""],
            ),
            (
                "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --served-model-name llama",
                ["sglang-served-model-name", "llama", ""],
            ),
            ("python3 -m sglang.launch_server --config sglang.yaml", ["sglang-server", "sglang", ""]),
            (
                "/usr/bin/python3 /usr/local/bin/lmdeploy serve api_server internlm/internlm2_5-7b-chat --server-port 23333",
                ["lmdeploy", "internlm/internlm2_5-7b-chat", ""],
            ),
        ]);
    }

    #[test]
    fn llama_cpp() {
        check(&[
            (
                "/usr/bin/python3 -m llama_cpp.server --model /models/llama-3.1-8b-instruct.Q4_K_M.gguf --n_gpu_layers 35",
                ["llama-cpp", "llama-3.1-8b-instruct.Q4_K_M", ""],
            ),
            ("python3 -m llama_cpp.server --model=./models/phi-3-mini.Q8_0.gguf", ["llama-cpp", "phi-3-mini.Q8_0", ""]),
            (
                "/app/llama-server -m /models/mistral-7b-instruct-v0.2.Q5_K_M.gguf --host 0.0.0.0 --port 8080 -ngl 99",
                ["llama-cpp", "mistral-7b-instruct-v0.2.Q5_K_M", ""],
            ),
            ("./llama-server --model models/7B/ggml-model-f16.gguf -c 2048", ["llama-cpp", "ggml-model-f16", ""]),
            ("llama-server -m model.gguf", ["llama-cpp", "model", ""]),
            (
                "llama-server -hf ggml-org/gemma-3-1b-it-GGUF --port 8080",
                ["llama-cpp", "ggml-org/gemma-3-1b-it-GGUF", ""],
            ),
            ("llama-server -m /models/gemma.gguf --alias gemma", ["llama-cpp-alias", "gemma", ""]),
            (
                "python3 -m llama_cpp.server --model /m/x.gguf --model_alias gpt-3.5-turbo",
                ["llama-cpp-alias", "gpt-3.5-turbo", ""],
            ),
            ("/app/llama-server --host 0.0.0.0", ["llama-cpp-server", "llama.cpp", ""]),
        ]);
    }

    #[test]
    fn servers_of_many_models() {
        // TorchServe's JVM, as `torchserve --start` runs it.
        let jvm = "java -Dmodel_server_home=/usr/local/lib/python3.10/dist-packages -Djava.io.tmpdir=/tmp \
            -cp .:/usr/local/lib/python3.10/dist-packages/ts/frontend/* org.pytorch.serve.ModelServer \
            --python /usr/bin/python3 -f /home/model-server/config.properties -s /home/model-server/model-store";
        let jvm_models = format!("{jvm} -m resnet-18=resnet-18.mar -ncs");
        check(&[
            ("/usr/local/bin/ollama serve", ["ollama", "ollama", ""]),
            ("tritonserver --model-repository=/models --http-port=8000", ["triton", "tritonserver", ""]),
            (
                "/opt/tritonserver/bin/tritonserver --model-repository s3://bucket/models",
                ["triton", "tritonserver", ""],
            ),
            (
                "/usr/bin/python3 /usr/local/bin/torchserve --start --ncs --model-store model_store --models densenet161=densenet161.mar",
                ["torchserve", "densenet161", ""],
            ),
            (&jvm_models, ["torchserve", "resnet-18", ""]),
            ("torchserve --start --models=/models/squeezenet1_1.mar --foreground", ["torchserve", "squeezenet1_1", ""]),
            (
                "torchserve --start --models https://torchserve.pytorch.org/mar_files/squeezenet1_1.mar",
                ["torchserve", "squeezenet1_1", ""],
            ),
            ("torchserve --start --model-store /models --models all", ["torchserve-server", "torchserve", ""]),
            ("torchserve --start --model-store /models", ["torchserve-server", "torchserve", ""]),
            (jvm, ["torchserve-server", "torchserve", ""]),
            (
                "tensorflow_model_server --port=8500 --rest_api_port=8501 --model_name=half_plus_two --model_base_path=/models/half_plus_two",
                ["tf-serving", "half_plus_two", ""],
            ),
            (
                "/usr/bin/tensorflow_model_server --model_config_file=/models/models.config",
                ["tf-serving-server", "tensorflow-serving", ""],
            ),
            ("/usr/bin/python3 /usr/local/bin/mlserver start .", ["mlserver", "mlserver", ""]),
        ]);
    }

    #[test]
    fn uvicorn() {
        check(&[
            (
                "/usr/local/bin/python3.11 /usr/local/bin/uvicorn app.main:app --host 0.0.0.0 --port 8000",
                ["uvicorn", "app.main", ""],
            ),
            ("python -m uvicorn --host 0.0.0.0 --port 8080 server:app", ["uvicorn", "server", ""]),
            ("uvicorn --factory svc.api:create_app --workers 4", ["uvicorn", "svc.api", ""]),
        ]);
        // Without an app spec there is nothing to name.
        assert_eq!(matched(&builtins(), &["uvicorn", "--help"]), None);
    }

    #[test]
    fn other_processes_match_nothing() {
        let rules = builtins();
        for args in [
            &[][..],
            &[""],
            &["bash"],
            &["python3", "script.py"],
            &["/usr/bin/python3", "-m", "http.server", "8000"],
            &["vllm", "chat", "--url", "http://localhost:8000/v1"],
            &["/usr/bin/python3", "/usr/local/bin/vllm", "bench", "serve", "--model", "x/y"],
            &["ollama", "run", "llama3"],
            &["/usr/local/bin/ollama", "runner", "--model", "/root/.ollama/models/blobs/sha256-6a0746a1ec1a"],
            &["pgrep", "-f", "tritonserver"],
            &["grep", "vllm serve"],
            &["bash", "-c", "vllm serve meta-llama/Llama-3.1-8B-Instruct"],
            &["torchserve", "--stop"],
            &["llama-cli", "-m", "/models/x.gguf"],
            &["java", "-jar", "app.jar"],
            &["myvllm", "serve", "x"],
        ] {
            assert_eq!(matched(&rules, args), None, "{args:?}");
        }
    }

    #[test]
    fn user_rules_come_first_and_replace_or_disable_builtins() {
        let vllm = argv(&["/usr/bin/python3", "/usr/local/bin/vllm", "serve", "org/model"]);
        let ollama = argv(&["ollama", "serve"]);
        let mine = RuleConfig { exe: Some("python3.11".into()), ..rule("mine", Some("vllm serve"), "custom") };
        // Replacing `vllm` keeps `vllm-server`; a user rule is tried before every built-in.
        let user = [
            rule("vllm", Some(r"vllm serve (\S+)"), "v-$1"),
            RuleConfig { disabled: true, ..rule("ollama", None, "") },
            RuleConfig { disabled: true, ..rule("my-old-rule", Some("x"), "") },
            mine.clone(),
        ];
        let rules = Rules::compile(&user, true).unwrap();
        let names: Vec<_> = rules.names().collect();
        assert_eq!(&names[..2], ["vllm", "mine"]);
        assert!(!names.contains(&"ollama") && names.contains(&"vllm-server") && !names.contains(&"my-old-rule"));
        let m = rules.match_process(&facts("python3.11", &vllm, "/")).unwrap();
        assert_eq!((&*m.rule, m.model.as_str()), ("vllm", "v-org/model"));
        assert_eq!(rules.match_process(&facts("ollama", &ollama, "/")), None);

        // Built-ins off: only the user's rules.
        let rules = Rules::compile(&[mine], false).unwrap();
        assert_eq!(rules.names().collect::<Vec<_>>(), ["mine"]);
        assert_eq!(rules.match_process(&facts("python3.12", &vllm, "/")), None);
        assert_eq!(rules.match_process(&facts("python3.11", &vllm, "/")).unwrap().model, "custom");
        assert_eq!(Rules::compile(&[], false).unwrap().match_process(&facts("ollama", &ollama, "/")), None);
    }

    #[test]
    fn capture_groups_numbered_and_named() {
        let user = [RuleConfig {
            version: Some("v${ver}".into()),
            ..rule("svc", Some(r"^/opt/(\w+)/bin/serve --model (?P<m>\S+)(?: --version (?P<ver>\S+))?"), "$1:${m}$$")
        }];
        let rules = Rules::compile(&user, false).unwrap();
        let args = argv(&["/opt/acme/bin/serve", "--model", "fraud", "--version", "7"]);
        let m = rules.match_process(&facts("serve", &args, "/")).unwrap();
        assert_eq!((m.model.as_str(), m.version.as_str()), ("acme:fraud$", "v7"));
        // A group that took no part expands to nothing.
        let args = argv(&["/opt/acme/bin/serve", "--model", "fraud"]);
        assert_eq!(rules.match_process(&facts("serve", &args, "/")).unwrap().version, "v");
        // `${1}` is group 1 before a digit; `$0` the whole match.
        let rules = Rules::compile(&[rule("r", Some(r"run (\w+)"), "${1}2-$0")], false).unwrap();
        let args = argv(&["run", "x"]);
        assert_eq!(rules.match_process(&facts("", &args, "/")).unwrap().model, "x2-run x");
    }

    #[test]
    fn an_empty_model_tries_the_next_rule() {
        let user = [rule("opt", Some(r"serve(?: --name (\w+))?"), "$1"), rule("any", Some("serve"), "fallback")];
        let rules = Rules::compile(&user, false).unwrap();
        let args = argv(&["serve", "--name", "a"]);
        assert_eq!(rules.match_process(&facts("", &args, "/")).unwrap().model, "a");
        let args = argv(&["serve"]);
        let m = rules.match_process(&facts("", &args, "/")).unwrap();
        assert_eq!((&*m.rule, m.model.as_str()), ("any", "fallback"));
    }

    #[test]
    fn exe_and_cgroup_matchers() {
        let exe_rule = RuleConfig { exe: Some("text-generation-launcher".into()), ..rule("tgi-exe", None, "tgi") };
        let service = RuleConfig { cgroup: Some("/system.slice/my-model.service".into()), ..rule("svc", None, "mine") };
        let scope = RuleConfig { cgroup: Some("/user.slice/**/ollama*.scope".into()), ..rule("scope", None, "ollama") };
        let tree = RuleConfig { cgroup: Some("system.slice/model-?.service/**".into()), ..rule("tree", None, "tree") };
        let rules = Rules::compile(&[exe_rule, service, scope, tree], false).unwrap();
        let model = |exe: &str, cgroup: &str| rules.match_process(&facts(exe, &[], cgroup)).map(|m| m.model);
        assert_eq!(model("text-generation-launcher", "/"), Some("tgi".into()));
        assert_eq!(model("/usr/local/bin/text-generation-launcher (deleted)", "/"), Some("tgi".into()));
        // A 15-byte comm stands for a longer name; a shorter one does not.
        assert_eq!(model("text-generation", "/"), Some("tgi".into()));
        assert_eq!(model("text-generatio", "/"), None);
        assert_eq!(model("sh", "/system.slice/my-model.service"), Some("mine".into()));
        assert_eq!(model("sh", "system.slice//my-model.service/"), Some("mine".into()));
        assert_eq!(model("sh", "/system.slice/my-model.service/sub"), None);
        assert_eq!(model("sh", "/system.slice/other.service"), None);
        let ollama = "/user.slice/user-1000.slice/user@1000.service/app.slice/ollama-1234.scope";
        assert_eq!(model("sh", ollama), Some("ollama".into()));
        assert_eq!(model("sh", "/user.slice/ollama.scope"), Some("ollama".into()));
        assert_eq!(model("sh", "/user.slice/a/ollama.scope/x"), None);
        assert_eq!(model("sh", "/system.slice/model-a.service"), Some("tree".into()));
        assert_eq!(model("sh", "/system.slice/model-a.service/a/b"), Some("tree".into()));
        assert_eq!(model("sh", "/system.slice/model-ab.service"), None);

        // Every matcher that is set must match.
        let both = RuleConfig { exe: Some("python3".into()), cgroup: Some("/a/*".into()), ..rule("b", Some("x"), "m") };
        let rules = Rules::compile(&[both], false).unwrap();
        let args = argv(&["python3", "x"]);
        assert!(rules.match_process(&facts("python3", &args, "/a/b")).is_some());
        assert!(rules.match_process(&facts("python3", &args, "/a/b/c")).is_none());
        assert!(rules.match_process(&facts("python3.11", &args, "/a/b")).is_none());
        assert!(rules.match_process(&facts("python3", &argv(&["python3", "y"]), "/a/b")).is_none());
    }

    #[test]
    fn glob_edge_cases() {
        let glob = |g: &str, path: &str| Glob::parse(g).unwrap().matches(&path_segments(path));
        assert!(glob("/**", "/"));
        assert!(glob("/**", "/a/b/c"));
        assert!(glob("/", ""));
        assert!(!glob("/", "/a"));
        assert!(glob("/**/c", "/c"));
        assert!(glob("/a/**/**/c", "/a/x/y/c"));
        assert!(glob("/*a*b*/x", "/xxaybzb/x"));
        assert!(!glob("/*a*b*/x", "/xxbya/x"));
        assert!(glob("/🦀?.scope", "/🦀é.scope"));
        assert!(!glob("/a?", "/a"));
        let deep = "/a".repeat(5_000) + "/b";
        assert!(glob("/**/a/**/b", &deep));
        assert!(!glob("/**/a/**/c", &deep));
    }

    #[test]
    fn errors_name_the_rule_and_the_fault() {
        let err = |rules: &[RuleConfig]| Rules::compile(rules, true).unwrap_err().to_string();
        let e = err(&[rule("broken", Some(r"serve (\S+"), "$1")]);
        assert!(e.starts_with("rule `broken`: `cmdline` is not a valid regex:") && e.contains("unclosed group"), "{e}");
        let e = err(&[rule("r", Some(r"serve (?P<model>\S+)"), "${modle}")]);
        assert_eq!(e, "rule `r`: `model` refers to group `modle`, which the `cmdline` regex does not define");
        let e = err(&[rule("r", Some(r"serve (\S+)"), "$2")]);
        assert_eq!(e, "rule `r`: `model` refers to group 2, but the `cmdline` regex has 1 group(s)");
        let e = err(&[RuleConfig { version: Some("$1".into()), ..rule("r", Some("serve"), "m") }]);
        assert_eq!(e, "rule `r`: `version` refers to group 1, but the `cmdline` regex has 0 group(s)");
        let e = err(&[RuleConfig { exe: Some("x".into()), ..rule("r", None, "$1") }]);
        assert_eq!(e, "rule `r`: `model` refers to group `1`, but the rule has no `cmdline` regex");
        for (model, fault) in
            [("${1", "without its `}`"), ("a$", "starts no group"), ("$x", "starts no group"), ("${}", "empty")]
        {
            let e = err(&[rule("r", Some("(x)"), model)]);
            assert!(e.starts_with("rule `r`: `model` ") && e.contains(fault), "{model}: {e}");
        }
        let e = err(&[rule("r", Some("(x)"), "$99999999999999999999999")]);
        assert!(e.contains("refers to group 9"), "{e}");
        assert_eq!(
            err(&[rule("r", None, "m")]),
            "rule `r` has no matcher: set at least one of `exe`, `cmdline` and `cgroup`"
        );
        assert_eq!(err(&[rule("r", Some("x"), "  ")]), "rule `r`: `model` is empty");
        assert_eq!(err(&[rule("a", Some("x"), "m"), rule(" ", Some("x"), "m")]), "rule 1 has an empty `name`");
        assert_eq!(err(&[rule("a", Some("x"), "m"), rule("a", Some("y"), "n")]), "rule `a` is defined twice");
        let e = err(&[RuleConfig { disabled: true, ..rule("olama", None, "") }]);
        assert_eq!(e, "rule `olama` disables nothing: no built-in rule has that name");
        let e = err(&[RuleConfig { exe: Some("/usr/bin/ollama".into()), ..rule("r", None, "m") }]);
        assert!(e.starts_with("rule `r`: `exe` is matched against the executable's file name"), "{e}");
        assert_eq!(err(&[RuleConfig { exe: Some(String::new()), ..rule("r", None, "m") }]), "rule `r`: `exe` is empty");
        for glob in ["", " ", "/a/b**", "/**x/c"] {
            let e = err(&[RuleConfig { cgroup: Some(glob.into()), ..rule("g", None, "m") }]);
            assert!(e.starts_with("rule `g`: `cgroup` "), "{glob}: {e}");
        }
    }

    #[test]
    fn yaml_rules_deserialise_strictly() {
        let yaml = r#"
- name: fraud
  cmdline: 'serve --model (?P<model>\S+)'
  model: ${model}
  version: "2"
- name: ollama
  disabled: true
"#;
        let rules: Vec<RuleConfig> = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(rules[0].cmdline.as_deref(), Some(r"serve --model (?P<model>\S+)"));
        assert_eq!((rules[1].disabled, rules[1].model.as_str()), (true, ""));
        Rules::compile(&rules, true).unwrap();
        let typo = "- name: x\n  cmdlin: y\n  model: m\n";
        assert!(serde_yaml_ng::from_str::<Vec<RuleConfig>>(typo).unwrap_err().to_string().contains("cmdlin"));
        // Unset fields stay out of the serialised form, and it reads back the same.
        let text = serde_yaml_ng::to_string(&rules).unwrap();
        assert!(!text.contains("exe") && !text.contains("cgroup"), "{text}");
        assert_eq!(serde_yaml_ng::from_str::<Vec<RuleConfig>>(&text).unwrap(), rules);
    }

    #[test]
    fn model_labels() {
        for (raw, want) in [
            ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
            ("meta-llama/Llama-3.1-8B-Instruct/", "meta-llama/Llama-3.1-8B-Instruct"),
            ("/models/llama-3.1-8b-instruct.Q4_K_M.gguf", "llama-3.1-8b-instruct.Q4_K_M"),
            ("/models/Qwen2.5-7B-Instruct//", "Qwen2.5-7B-Instruct"),
            ("./model.safetensors", "model"),
            ("../x/pytorch_model.BIN", "pytorch_model"),
            ("~/models/phi.gguf", "phi"),
            ("s3://bucket/models/llama", "llama"),
            ("models/7B/ggml-model-f16.gguf", "ggml-model-f16"),
            ("model.gguf", "model"),
            (".gguf", ".gguf"),
            ("'quoted/model'", "quoted/model"),
            ("  spaced  ", "spaced"),
            ("resnet50", "resnet50"),
            ("/", ""),
            ("./", ""),
            ("~", ""),
            ("..", ""),
            ("", ""),
            ("\"", "\""),
        ] {
            assert_eq!(model_label(raw), want, "{raw:?}");
        }
        let long = "é".repeat(200);
        let label = model_label(&long);
        assert!(label.len() <= MAX_LABEL_BYTES && label.len() == 128 && label.chars().all(|c| c == 'é'));
        assert_eq!(version_label(&"v".repeat(300)).len(), MAX_LABEL_BYTES);
    }

    #[test]
    fn huge_and_odd_inputs_do_not_panic() {
        let rules = builtins();
        // A huge command line is cut at a char boundary; the model flag near the front still counts.
        let mut args = argv(&["vllm", "serve", "org/model"]);
        args.extend(std::iter::repeat_n("🦀".repeat(1000), 100));
        assert_eq!(matched(&rules, &args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap().1, "org/model");
        let joined = join_cmdline(&args);
        assert!(joined.len() <= MAX_CMDLINE_BYTES && joined.len() > MAX_CMDLINE_BYTES - 4);
        assert_eq!(join_cmdline(&["x".repeat(10_000)]).len(), MAX_CMDLINE_BYTES);
        assert_eq!(join_cmdline(&argv(&["", "", "a"])), "  a");
        assert!(join_cmdline(&vec![String::new(); 10_000]).len() <= MAX_CMDLINE_BYTES);
        // A model flag past the cut is not seen.
        let mut late = argv(&["vllm", "serve", "--port", &"9".repeat(5000)]);
        late.extend(argv(&["--model", "x/y"]));
        let m = rules.match_process(&facts("python3", &late, "/")).unwrap();
        assert_eq!((&*m.rule, m.model.as_str()), ("vllm-server", "vllm"));

        let user = [RuleConfig { cgroup: Some("/**/*?*".into()), ..rule("all", Some(r"(?P<all>.*)"), "${all}") }];
        let all = Rules::compile(&user, true).unwrap();
        let tokens = ["vllm", "serve", "--model", "=", "-m", "🦀", "\0", "\n", "/", "..", "", " ", "all", "\u{feff}"];
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..3_000 {
            let args: Vec<String> = (0..next(10)).map(|_| tokens[next(tokens.len())].repeat(next(3) + 1)).collect();
            let cgroup: String = (0..next(6)).map(|_| tokens[next(tokens.len())]).collect();
            for rules in [&rules, &all] {
                if let Some(m) = rules.match_process(&facts(tokens[next(tokens.len())], &args, &cgroup)) {
                    assert!(!m.model.is_empty() && m.model.len() <= MAX_LABEL_BYTES, "{args:?}");
                    assert!(m.version.len() <= MAX_LABEL_BYTES);
                }
            }
        }
    }
}
