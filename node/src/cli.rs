//! The command-line convention every `leam` command follows (`specs/cli.md`): exit codes, the
//! shared typed flags (`--backend`, `--sector`, `--preset`), where files are found and state is
//! kept, JSON output, and the version line.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use leam_ledger::entry::Sector;

/// Exit code: the data is wrong (tampered, forged, inconsistent, fraud found, a kernel that
/// differs from the reference).
pub const EXIT_INVALID: u8 = 1;
/// Exit code: a usage error or unreadable input (clap's own code for usage errors).
pub const EXIT_INPUT: u8 = 2;
/// Exit code: an environment problem (no adapter where one is required, port in use, store
/// locked by a running node, a file that cannot be written).
pub const EXIT_ENV: u8 = 3;

/// An error with the exit code it was given where it happened.
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

/// Return a usage error (exit 2) from the enclosing function, formatted like `anyhow!`.
macro_rules! usage {
    ($($t:tt)*) => {
        return Err($crate::cli::fail($crate::cli::EXIT_INPUT, anyhow::anyhow!($($t)*)))
    };
}
pub(crate) use usage;

/// An error carrying `code`.
pub fn fail(code: u8, error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Coded { code, error })
}

/// Give a result's error an exit code.
pub trait CodeExt<T> {
    /// The error, with `code`.
    fn code(self, code: u8) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> CodeExt<T> for Result<T, E> {
    fn code(self, code: u8) -> anyhow::Result<T> {
        self.map_err(|e| fail(code, e.into()))
    }
}

/// The exit code of a log error: 3 for a store held by another process or failing I/O, 2 for a
/// directory or key file that cannot be used, 1 for contents that do not verify.
fn log_code(e: &leam_ledger::log::LogError) -> u8 {
    use leam_ledger::log::LogError as L;
    match e {
        L::Store(s) => store_code(s),
        L::Identity(_) | L::Location { .. } | L::Batch { .. } => EXIT_INPUT,
        L::CheckpointFile { .. } => EXIT_ENV,
        L::Merkle { .. }
        | L::Decode { .. }
        | L::Signature { .. }
        | L::Rule { .. }
        | L::Checkpoint { .. }
        | L::Corrupt { .. } => EXIT_INVALID,
    }
}

fn store_code(e: &leam_ledger::store::StoreError) -> u8 {
    use leam_ledger::store::StoreError as S;
    match e {
        S::Locked { .. } | S::Backend { .. } | S::CheckpointChanged { .. } => EXIT_ENV,
        S::Location { .. } => EXIT_INPUT,
        S::Missing { .. } | S::Corrupt { .. } | S::NotAtEnd { .. } => EXIT_INVALID,
    }
}

/// The exit code of an error: the code given where it happened ([`Coded`]), else by its type
/// (an audit or verification failure 1, a locked store or a missing adapter 3), else 2: the
/// command could not use what it was given.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use leam_ledger::audit::AuditError;
    for e in err.chain() {
        if let Some(c) = e.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(a) = e.downcast_ref::<AuditError>() {
            return match a {
                AuditError::Log(l) => log_code(l),
                AuditError::State { .. } => EXIT_INPUT,
                _ => EXIT_INVALID,
            };
        }
        if let Some(l) = e.downcast_ref::<leam_ledger::log::LogError>() {
            return log_code(l);
        }
        if let Some(s) = e.downcast_ref::<leam_ledger::store::StoreError>() {
            return store_code(s);
        }
        if let Some(c) = e.downcast_ref::<leam_net::core::CoreError>() {
            if c.is_locked() {
                return EXIT_ENV;
            }
        }
        if let Some(leam_compute::numerics::backend::BackendError::Gpu { .. }) = e.downcast_ref() {
            return EXIT_ENV;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::NotFound | K::InvalidData | K::InvalidInput | K::AlreadyExists => EXIT_INPUT,
                K::PermissionDenied | K::UnexpectedEof | K::IsADirectory => EXIT_INPUT,
                _ => EXIT_ENV,
            };
        }
    }
    EXIT_INPUT
}

// ---------------------------------------------------------------------------------------------
// Typed flags

/// The compute backend of a command (`--backend`). One default everywhere: `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// A hardware GPU through wgpu if one passes the kernel probe, else the CPU reference.
    #[default]
    Auto,
    /// The CPU reference.
    Cpu,
    /// The first wgpu adapter (exit 3 if there is none).
    Wgpu,
}

impl Backend {
    /// The name `leam_compute::numerics::backend::select` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
        }
    }

    /// [`Backend::open`] for a long-running process: `auto` decides in a child process
    /// (`leam compute probe --json`, this same executable), so that when the decision is the
    /// CPU no GPU driver was ever loaded here (Mesa's adapter probe alone keeps ~60 MiB
    /// resident: an idle node measured 89–94 MiB with it, 27 MiB without). Where the child cannot
    /// run or answers nonsense, the decision is taken in this process as before.
    pub fn open_isolated(
        self,
    ) -> anyhow::Result<Box<dyn leam_compute::numerics::kernels::Kernels>> {
        if self != Backend::Auto {
            return self.open();
        }
        let Some(decision) = decide_auto_in_child() else {
            return self.open();
        };
        let s = leam_compute::numerics::backend::open_decided(decision).code(EXIT_ENV)?;
        if let Some(w) = &s.warning {
            tracing::warn!(warning = %w, "backend");
            eprintln!("WARNING: {w}");
        }
        Ok(s.kernels)
    }

    /// Open the backend; no usable adapter for `wgpu` is an environment problem (exit 3).
    /// A GPU that `auto` passes over because it gives wrong bits is said on stderr, naming the
    /// kernel.
    pub fn open(self) -> anyhow::Result<Box<dyn leam_compute::numerics::kernels::Kernels>> {
        let s = leam_compute::numerics::backend::select(self.name()).code(EXIT_ENV)?;
        if let Some(w) = &s.warning {
            tracing::warn!(warning = %w, "backend");
            eprintln!("WARNING: {w}");
        }
        Ok(s.kernels)
    }
}

/// The sector of an organisation (`--sector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SectorArg {
    /// Public institutions (computing centres, agencies).
    Public,
    /// Companies.
    Private,
    /// Universities and research institutes.
    Science,
    /// Startups (their leases may be subsidised from public funding).
    Startup,
}

impl From<SectorArg> for Sector {
    fn from(s: SectorArg) -> Sector {
        match s {
            SectorArg::Public => Sector::Public,
            SectorArg::Private => Sector::Private,
            SectorArg::Science => Sector::Science,
            SectorArg::Startup => Sector::Startup,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Presets: the one definition of every nanoGPT flag, shared by train, eval and the demo

/// Named training configurations (`--preset`); explicit flags override them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// nanoGPT's CPU command line for train_shakespeare_char: 4 layers, 4 heads, 128 wide,
    /// context 64, batch 12, 2000 iterations, lr 1e-3 → 1e-4 decaying over max_iters with 100
    /// warm-up, β2 0.99, weight decay 0.1, no dropout, seed 1337, evaluation every 250
    /// iterations on 20 batches.
    NanogptCpu,
    /// The demo's shards: 2 layers, 4 heads, 64 wide, context 32, batch 8, 90 iterations
    /// (3 rounds × 30 steps), 10 warm-up, otherwise as nanogpt-cpu; evaluation on 16 batches
    /// at the end only.
    Demo,
}

impl Preset {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::NanogptCpu => "nanogpt-cpu",
            Preset::Demo => "demo",
        }
    }
}

/// Every setting of a training run that a flag of `leam train` names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSettings {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub batch_size: usize,
    pub max_iters: u64,
    /// `None`: decay over `max_iters`.
    pub lr_decay_iters: Option<u64>,
    pub learning_rate: f64,
    pub min_lr: f64,
    pub warmup_iters: u64,
    pub weight_decay: f64,
    pub beta2: f64,
    pub seed: u64,
    pub eval_interval: u64,
    pub eval_iters: usize,
}

impl TrainSettings {
    /// Without `--preset`: nanogpt-cpu, except 200 evaluation batches (nanoGPT's config file;
    /// its CPU command line lowers them to 20).
    pub const DEFAULT: TrainSettings = TrainSettings {
        eval_iters: 200,
        ..Self::NANOGPT_CPU
    };

    /// `leam_compute::model::preset::NANOGPT_CPU`, the one definition of the preset.
    const NANOGPT_CPU: TrainSettings = {
        let p = leam_compute::model::preset::NANOGPT_CPU;
        TrainSettings {
            n_layer: p.n_layer,
            n_head: p.n_head,
            n_embd: p.n_embd,
            block_size: p.block_size,
            batch_size: p.batch_size,
            max_iters: p.max_iters,
            lr_decay_iters: None,
            learning_rate: p.hyper.learning_rate,
            min_lr: p.hyper.min_lr,
            warmup_iters: p.hyper.warmup_iters,
            weight_decay: p.hyper.weight_decay,
            beta2: p.hyper.beta2,
            seed: p.seed,
            eval_interval: p.eval_interval,
            eval_iters: p.eval_iters,
        }
    };

    const DEMO: TrainSettings = TrainSettings {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        block_size: 32,
        batch_size: 8,
        max_iters: 90,
        warmup_iters: 10,
        eval_interval: 0,
        eval_iters: 16,
        ..Self::NANOGPT_CPU
    };

    /// The settings of `preset`, or the defaults.
    pub fn of(preset: Option<Preset>) -> TrainSettings {
        match preset {
            None => Self::DEFAULT,
            Some(Preset::NanogptCpu) => Self::NANOGPT_CPU,
            Some(Preset::Demo) => Self::DEMO,
        }
    }

    /// The optimizer settings (β1 and the gradient clip are nanoGPT's, not flags).
    pub fn hyper(&self) -> leam_compute::model::optim::Hyper {
        leam_compute::model::optim::Hyper {
            learning_rate: self.learning_rate,
            min_lr: self.min_lr,
            warmup_iters: self.warmup_iters,
            lr_decay_iters: self.lr_decay_iters.unwrap_or(self.max_iters),
            weight_decay: self.weight_decay,
            beta2: self.beta2,
            ..leam_compute::model::optim::Hyper::NANOGPT_CPU
        }
    }

    /// The model on a vocabulary of `vocab` characters.
    pub fn model(&self, vocab: usize) -> leam_compute::model::transformer::Config {
        leam_compute::model::transformer::Config {
            vocab,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            block_size: self.block_size,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files: the corpus, the auditor state

/// The demo corpus's file name and its place in the repository.
pub const CORPUS_FILE: &str = "tinyshakespeare.txt";
pub const CORPUS_REPO_PATH: &str = "data/tinyshakespeare.txt";

/// The corpus: `--corpus` if given, else `tinyshakespeare.txt` next to the binary (also in a
/// `data/` folder there), else `data/tinyshakespeare.txt` in the working folder. Not found: an
/// error that lists where it looked (exit 2).
pub fn find_corpus(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        return Err(fail(
            EXIT_INPUT,
            anyhow!("--corpus {}: no such file", p.display()),
        ));
    }
    let mut looked = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        looked.push(dir.join(CORPUS_FILE));
        looked.push(dir.join(CORPUS_REPO_PATH));
    }
    looked.push(PathBuf::from(CORPUS_REPO_PATH));
    if let Some(p) = looked.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(fail(
        EXIT_INPUT,
        anyhow!(
            "corpus not found (looked for {}); pass --corpus FILE",
            looked
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// File name of the auditor state in the user's state directory.
pub const AUDIT_STATE_FILE: &str = "audit-state.json";

/// The user's state directory for leam: `$XDG_STATE_HOME/leam`, else `$HOME/.local/state/leam`.
pub fn state_dir() -> anyhow::Result<PathBuf> {
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = non_empty("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return Ok(x.join("leam"));
    }
    if let Some(h) = non_empty("HOME") {
        return Ok(h.join(".local").join("state").join("leam"));
    }
    Err(fail(
        EXIT_ENV,
        anyhow!(
            "no state directory: neither XDG_STATE_HOME nor HOME is set; pass --state FILE or --no-state"
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Output

/// The reader of stdout went away before the command finished writing (`leam man | head -1`).
/// Not a failure of the command: `main` exits 0 without a message (what a command killed by
/// SIGPIPE would look like to a shell pipeline, minus the signal).
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// An error writing to stdout: a closed pipe is [`StdoutClosed`] (exit 0, quietly); anything
/// else (a full disk behind a redirection) an environment problem (3).
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        fail(EXIT_ENV, anyhow!("writing to stdout: {e}"))
    }
}

/// Whether `err` is only that the reader of stdout went away.
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<StdoutClosed>())
}

/// Write `bytes` to stdout and flush; errors as [`stdout_error`] says.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Print one JSON document on stdout (pretty, with a final newline). A reader that left early
/// is ignored here, so that the command's exit code stays its verdict (an audit that found
/// fraud exits 1 even when piped into `head`).
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    match write_stdout(text.as_bytes()) {
        Err(e) if is_stdout_closed(&e) => Ok(()),
        r => r,
    }
}

/// Whether progress bars may be drawn: only when stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

/// `leam --version`: the version, the git commit it was built from, the compiled-in backends.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LEAM_GIT_COMMIT"),
    ")\nbackends: cpu, wgpu (wgpu adapters are found at run time: `leam compute selftest`)"
);

/// The JSON form of `auto`'s decision (`leam compute probe --json`, specs/cli.md):
/// `backend` (`wgpu` or `cpu`), `reason`, `warning` (null unless a GPU gave wrong bits).
pub fn auto_decision_json(d: &leam_compute::numerics::backend::AutoDecision) -> serde_json::Value {
    use leam_compute::numerics::backend::AutoDecision;
    match d {
        AutoDecision::Gpu => serde_json::json!({
            "backend": "wgpu", "reason": "the adapter passes the kernel probe", "warning": null,
        }),
        AutoDecision::Cpu { reason, warning } => serde_json::json!({
            "backend": "cpu", "reason": reason, "warning": warning,
        }),
    }
}

/// Inverse of [`auto_decision_json`]; `None` for anything else.
pub fn auto_decision_from_json(
    v: &serde_json::Value,
) -> Option<leam_compute::numerics::backend::AutoDecision> {
    use leam_compute::numerics::backend::AutoDecision;
    match v.get("backend")?.as_str()? {
        "wgpu" => Some(AutoDecision::Gpu),
        "cpu" => Some(AutoDecision::Cpu {
            reason: v.get("reason")?.as_str()?.to_string(),
            warning: v.get("warning")?.as_str().map(str::to_string),
        }),
        _ => None,
    }
}

/// Runs `leam compute probe --json` as a child of this executable and reads its decision;
/// `None` if it cannot run, fails or prints something else (the caller then decides itself).
fn decide_auto_in_child() -> Option<leam_compute::numerics::backend::AutoDecision> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["compute", "probe", "--json"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    auto_decision_from_json(&serde_json::from_slice(&out.stdout).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_file_presets_are_the_train_presets() {
        use leam_market::job::ModelSpec;
        for (preset, spec) in [
            (Preset::NanogptCpu, ModelSpec::NANOGPT_CPU),
            (Preset::Demo, ModelSpec::DEMO),
        ] {
            let t = TrainSettings::of(Some(preset));
            assert_eq!(
                (t.n_layer, t.n_head, t.n_embd, t.block_size, t.batch_size),
                (
                    spec.n_layer as usize,
                    spec.n_head as usize,
                    spec.n_embd as usize,
                    spec.block_size as usize,
                    spec.batch as usize
                ),
                "{preset:?}"
            );
            assert_eq!(t.seed, spec.init_seed, "{preset:?}");
        }
    }

    #[test]
    fn auto_decisions_survive_their_json_form() {
        use leam_compute::numerics::backend::AutoDecision;
        for d in [
            AutoDecision::Gpu,
            AutoDecision::Cpu {
                reason: "no wgpu adapter opens".into(),
                warning: None,
            },
            AutoDecision::Cpu {
                reason: "adapter X failed the kernel probe".into(),
                warning: Some("GPU X gives wrong bits in kernel `matmul`".into()),
            },
        ] {
            assert_eq!(auto_decision_from_json(&auto_decision_json(&d)), Some(d));
        }
        for bad in [
            r#"{}"#,
            r#"{"backend":"tpu"}"#,
            r#"{"backend":"cpu","warning":null}"#,
        ] {
            assert_eq!(
                auto_decision_from_json(&serde_json::from_str(bad).unwrap()),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn default_settings_are_the_preset_but_for_evaluation_batches() {
        assert_eq!(TrainSettings::DEFAULT.eval_iters, 200);
        assert_eq!(
            TrainSettings {
                eval_iters: 20,
                ..TrainSettings::DEFAULT
            },
            TrainSettings::of(Some(Preset::NanogptCpu))
        );
        // The optimizer of the defaults is nanoGPT's, decaying over max_iters.
        let h = TrainSettings::DEFAULT.hyper();
        let mut n = leam_compute::model::optim::Hyper::nanogpt_cpu();
        n.lr_decay_iters = 2000;
        assert_eq!(format!("{h:?}"), format!("{n:?}"));
    }

    #[test]
    fn exit_codes_by_error_type() {
        let locked = leam_ledger::store::StoreError::Locked {
            path: "x".into(),
            waited_ms: 1,
        };
        let e = anyhow::Error::new(leam_ledger::log::LogError::Store(locked));
        assert_eq!(exit_code(&e), EXIT_ENV);
        let e = anyhow::Error::new(leam_ledger::audit::AuditError::RootMismatch {
            dir: "x".into(),
            size: 1,
            computed: "a".into(),
            expected: "b".into(),
        })
        .context("auditing");
        assert_eq!(exit_code(&e), EXIT_INVALID);
        let e = fail(EXIT_ENV, anyhow!("x")).context("outer");
        assert_eq!(exit_code(&e), EXIT_ENV);
        assert_eq!(exit_code(&anyhow!("plain")), EXIT_INPUT);
    }

    #[test]
    fn a_closed_stdout_is_no_error_but_other_write_errors_are_environment_ones() {
        use std::io::{Error, ErrorKind};
        let e = stdout_error(Error::from(ErrorKind::BrokenPipe)).context("writing the man page");
        assert!(is_stdout_closed(&e));
        let e = stdout_error(Error::from(ErrorKind::StorageFull));
        assert!(!is_stdout_closed(&e));
        assert_eq!(exit_code(&e), EXIT_ENV);
        assert!(e.to_string().starts_with("writing to stdout: "), "{e}");
    }
}
