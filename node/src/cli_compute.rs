//! `leam train`, `leam sample`: single-node bit-exact training of the character-level
//! transformer and text generation from its checkpoints.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use leam_compute::model::checkpoint::Checkpoint;
use leam_compute::model::data::{Corpus, STREAM_EVAL_TRAIN, STREAM_EVAL_VAL};
use leam_compute::model::sample::generate;
use leam_compute::model::train::{run, LoopOptions, TrainState};

use crate::cli::{self, Backend, CodeExt as _, Preset, TrainSettings, EXIT_ENV, EXIT_INPUT};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// UTF-8 text file to train on (90% train / 10% validation). Default: tinyshakespeare.txt
    /// next to the binary (or in data/ there), else data/tinyshakespeare.txt in the working
    /// folder.
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Model, optimizer and evaluation flags (nanoGPT's names).
    #[command(flatten)]
    flags: Box<TrainFlags>,
    /// Write the final checkpoint to this file (default: none is written).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// No progress bar (a bar is drawn only when stderr is a terminal).
    #[arg(long)]
    quiet: bool,
    /// Print the result as one JSON document on stdout (fields in specs/cli.md); the
    /// evaluation lines go to stderr.
    #[arg(long)]
    json: bool,
}

/// The nanoGPT-named flags of `leam train` (boxed in `TrainArgs` to keep the command enum
/// small). Each is unset unless given: the preset (or the defaults) fill the rest.
#[derive(Debug, clap::Args)]
pub struct TrainFlags {
    /// Start from a named configuration; explicit flags override it. Default: the nanogpt-cpu
    /// settings with 200 evaluation batches.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Transformer blocks. Default: 4 (preset demo: 2).
    #[arg(long, value_name = "N")]
    n_layer: Option<usize>,
    /// Attention heads per block (must divide --n-embd). Default: 4.
    #[arg(long, value_name = "N")]
    n_head: Option<usize>,
    /// Embedding width, values per token. Default: 128 (preset demo: 64).
    #[arg(long, value_name = "N")]
    n_embd: Option<usize>,
    /// Context length, characters. Default: 64 (preset demo: 32).
    #[arg(long, value_name = "CHARS")]
    block_size: Option<usize>,
    /// Sequences per training step. Default: 12 (preset demo: 8).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Training steps (iterations). Default: 2000 (preset demo: 90).
    #[arg(long, value_name = "STEPS")]
    max_iters: Option<u64>,
    /// Steps over which the learning rate decays (cosine) to --min-lr. Default: --max-iters.
    #[arg(long, value_name = "STEPS")]
    lr_decay_iters: Option<u64>,
    /// Peak learning rate, reached after the warm-up. Default: 0.001.
    #[arg(long, value_name = "RATE")]
    learning_rate: Option<f64>,
    /// Learning rate at the end of the decay. Default: 0.0001.
    #[arg(long, value_name = "RATE")]
    min_lr: Option<f64>,
    /// Steps of linear learning-rate warm-up. Default: 100 (preset demo: 10).
    #[arg(long, value_name = "STEPS")]
    warmup_iters: Option<u64>,
    /// AdamW weight decay. Default: 0.1.
    #[arg(long, value_name = "RATE")]
    weight_decay: Option<f64>,
    /// AdamW β2 (β1 is 0.9, the gradient clip 1.0). Default: 0.99.
    #[arg(long, value_name = "BETA")]
    beta2: Option<f64>,
    /// Seed of initialization and batch sampling. Default: 1337.
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// Evaluate train and validation loss every this many steps (0: only at the end).
    /// Default: 250 (preset demo: 0).
    #[arg(long, value_name = "STEPS")]
    eval_interval: Option<u64>,
    /// Batches per split and evaluation. Default: 200 (preset nanogpt-cpu: 20, as nanoGPT's
    /// CPU command line; preset demo: 16).
    #[arg(long, value_name = "BATCHES")]
    eval_iters: Option<usize>,
}

impl TrainFlags {
    /// The preset (or the defaults) with every given flag over it.
    fn settings(&self) -> TrainSettings {
        let d = TrainSettings::of(self.preset);
        TrainSettings {
            n_layer: self.n_layer.unwrap_or(d.n_layer),
            n_head: self.n_head.unwrap_or(d.n_head),
            n_embd: self.n_embd.unwrap_or(d.n_embd),
            block_size: self.block_size.unwrap_or(d.block_size),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            max_iters: self.max_iters.unwrap_or(d.max_iters),
            lr_decay_iters: self.lr_decay_iters.or(d.lr_decay_iters),
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            min_lr: self.min_lr.unwrap_or(d.min_lr),
            warmup_iters: self.warmup_iters.unwrap_or(d.warmup_iters),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            beta2: self.beta2.unwrap_or(d.beta2),
            seed: self.seed.unwrap_or(d.seed),
            eval_interval: self.eval_interval.unwrap_or(d.eval_interval),
            eval_iters: self.eval_iters.unwrap_or(d.eval_iters),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Checkpoint written by `leam train --out`.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Characters to generate.
    #[arg(long, value_name = "CHARS", default_value_t = 500)]
    tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Text to continue (default: none).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Print `{"text": …}` as JSON instead of the bare text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `leam eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint written by `leam train --out`.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The corpus the checkpoint was trained on (its vocabulary must match the checkpoint's).
    /// Default: tinyshakespeare.txt next to the binary (or in data/ there), else
    /// data/tinyshakespeare.txt in the working folder.
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Take --eval-iters from this preset (the same one `leam train --preset` uses).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Batches per split (the same seeded batches `leam train --eval-iters N` uses). Default:
    /// 200 (preset nanogpt-cpu: 20, preset demo: 16).
    #[arg(long, value_name = "BATCHES")]
    eval_iters: Option<usize>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Print the result as one JSON document (fields in specs/cli.md).
    #[arg(long)]
    json: bool,
}

/// `leam eval`: re-measure a checkpoint's train and validation loss, so that anyone holding the
/// checkpoint and the corpus can check a claimed loss (with more batches than training used).
pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let eval_iters = args
        .eval_iters
        .unwrap_or(TrainSettings::of(args.preset).eval_iters);
    if eval_iters == 0 || eval_iters > leam_compute::model::train::EVAL_ITERS_MAX {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow::anyhow!(
                "--eval-iters must be in 1..={}, found {eval_iters}",
                leam_compute::model::train::EVAL_ITERS_MAX,
            ),
        ));
    }
    let ckpt = Checkpoint::load(&args.checkpoint).code(EXIT_INPUT)?;
    let corpus_path = cli::find_corpus(args.corpus.as_deref())?;
    let corpus = Corpus::load(&corpus_path).code(EXIT_INPUT)?;
    if corpus.vocab != ckpt.vocab {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow::anyhow!(
                "{}: its vocabulary ({} characters) differs from the checkpoint's ({} characters); \
                 evaluate on the corpus the model was trained on",
                corpus_path.display(),
                corpus.vocab.len(),
                ckpt.vocab.len()
            ),
        ));
    }
    let kernels = args.backend.open()?;
    let state = &ckpt.state;
    let train_loss = state.evaluate(
        kernels.as_ref(),
        &corpus.train,
        "training split",
        STREAM_EVAL_TRAIN,
        eval_iters,
    )?;
    let val_loss = state.evaluate(
        kernels.as_ref(),
        &corpus.val,
        "validation split",
        STREAM_EVAL_VAL,
        eval_iters,
    )?;
    let params = hex::encode(state.params_commitment());
    if args.json {
        return cli::print_json(&serde_json::json!({
            "step": state.step,
            "eval_iters": eval_iters,
            "batch_size": state.batch_size,
            "block_size": state.model.block_size,
            "backend": kernels.name(),
            "params": params,
            "train_loss": train_loss,
            "val_loss": val_loss,
        }))
        .map(|()| ExitCode::SUCCESS);
    }
    println!(
        "step {}, {} batches of {}x{} per split, backend {}",
        state.step,
        eval_iters,
        state.batch_size,
        state.model.block_size,
        kernels.name()
    );
    println!("params {params}");
    println!("train_loss {train_loss:.4}");
    println!("val_loss {val_loss:.4}");
    Ok(ExitCode::SUCCESS)
}

pub fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let f = args.flags.settings();
    let corpus_path = cli::find_corpus(args.corpus.as_deref())?;
    let corpus = Corpus::load(&corpus_path).code(EXIT_INPUT)?;
    let model = f.model(corpus.vocab.len());
    let hyper = f.hyper().to_fixed().code(EXIT_INPUT)?;
    let kernels = args.backend.open()?;
    let mut state = TrainState::new(model, hyper, f.batch_size, f.seed).code(EXIT_INPUT)?;
    let header = format!(
        "backend {} | {} parameters | n_layer {} n_head {} n_embd {} block_size {} batch_size {} max_iters {} | {} train / {} val tokens, vocab {}",
        kernels.name(),
        model.n_params(),
        model.n_layer,
        model.n_head,
        model.n_embd,
        model.block_size,
        f.batch_size,
        f.max_iters,
        corpus.train.len(),
        corpus.val.len(),
        model.vocab
    );
    if args.json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    let opts = LoopOptions {
        max_iters: f.max_iters,
        eval_interval: f.eval_interval,
        eval_iters: f.eval_iters,
        progress: !args.quiet && cli::stderr_is_terminal(),
    };
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    let curve = run(kernels.as_ref(), &mut state, &corpus, &opts, &mut |p| {
        let secs = started.elapsed().as_secs_f64();
        let line = format!(
            "step {}: train loss {:.4}, val loss {:.4} ({secs:.1} s)",
            p.step, p.train_loss, p.val_loss,
        );
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
        points.push(serde_json::json!({
            "step": p.step, "train_loss": p.train_loss, "val_loss": p.val_loss, "secs": secs,
        }));
    })?;
    if let Some(out) = &args.out {
        Checkpoint {
            vocab: corpus.vocab.clone(),
            state: state.clone(),
        }
        .save(out)
        .with_context(|| format!("writing checkpoint {}", out.display()))
        .code(EXIT_ENV)?;
        if !args.json {
            println!("checkpoint {}", out.display());
        }
    }
    let params = hex::encode(state.params_commitment());
    let val_loss = curve.last().map(|p| p.val_loss);
    if args.json {
        return cli::print_json(&serde_json::json!({
            "backend": kernels.name(),
            "parameters": model.n_params(),
            "n_layer": model.n_layer,
            "n_head": model.n_head,
            "n_embd": model.n_embd,
            "block_size": model.block_size,
            "batch_size": f.batch_size,
            "max_iters": f.max_iters,
            "vocab": model.vocab,
            "corpus": corpus_path.display().to_string(),
            "curve": points,
            "checkpoint": args.out.as_ref().map(|o| o.display().to_string()),
            "params": params,
            "val_loss": val_loss,
        }))
        .map(|()| ExitCode::SUCCESS);
    }
    println!("params {params}");
    match val_loss {
        Some(v) => println!("val_loss {v:.4}"),
        None => println!("val_loss nan"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sample(args: SampleArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::load(&args.checkpoint).code(EXIT_INPUT)?;
    let kernels = args.backend.open()?;
    let text = generate(
        kernels.as_ref(),
        &ckpt,
        &args.prompt,
        args.tokens,
        args.seed,
    )
    .code(EXIT_INPUT)?;
    if args.json {
        return cli::print_json(&serde_json::json!({ "text": text })).map(|()| ExitCode::SUCCESS);
    }
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
