//! `leam train`, `leam sample`: single-node bit-exact training of the character-level
//! transformer and text generation from its checkpoints.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use leam_compute::backend;
use leam_compute::checkpoint::Checkpoint;
use leam_compute::data::{Corpus, STREAM_EVAL_TRAIN, STREAM_EVAL_VAL};
use leam_compute::model::Config;
use leam_compute::optim::Hyper;
use leam_compute::sample::generate;
use leam_compute::train::{run, LoopOptions, TrainState};

/// Default demo corpus (tinyshakespeare, public domain).
const DEFAULT_CORPUS: &str = "data/tinyshakespeare.txt";

/// Named configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// nanoGPT's CPU configuration of train_shakespeare_char: 4 layers, 4 heads, 128 wide,
    /// context 64, batch 12, 2000 iterations, lr 1e-3 → 1e-4 over 2000 with 100 warm-up,
    /// β2 0.99, weight decay 0.1, no dropout.
    NanogptCpu,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// UTF-8 text file to train on (90% train / 10% validation).
    #[arg(long, default_value = DEFAULT_CORPUS)]
    corpus: PathBuf,
    /// `cpu`, `wgpu` or `auto`.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Model, optimizer and evaluation flags (nanoGPT's names).
    #[command(flatten)]
    flags: Box<TrainFlags>,
    /// Write the final checkpoint here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The nanoGPT-named flags of `leam train` (boxed in `TrainArgs` to keep the command enum small).
#[derive(Debug, clap::Args)]
pub struct TrainFlags {
    /// Start from a named configuration; explicit flags override it.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[arg(long)]
    n_layer: Option<usize>,
    #[arg(long)]
    n_head: Option<usize>,
    #[arg(long)]
    n_embd: Option<usize>,
    #[arg(long)]
    block_size: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    max_iters: Option<u64>,
    #[arg(long)]
    lr_decay_iters: Option<u64>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_iters: Option<u64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    beta2: Option<f64>,
    /// Seed of initialization and batch sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Evaluate train/val loss every this many iterations (0: only at the end).
    #[arg(long, default_value_t = 250)]
    eval_interval: u64,
    /// Batches per evaluation (default 200; 20 with `--preset nanogpt-cpu`, as nanoGPT's CPU
    /// command line).
    #[arg(long)]
    eval_iters: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Checkpoint written by `leam train --out`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Text to continue.
    #[arg(long, default_value = "")]
    prompt: String,
    /// `cpu`, `wgpu` or `auto`.
    #[arg(long, default_value = "auto")]
    backend: String,
}

/// Arguments of `leam eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint written by `leam train --out`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The corpus the checkpoint was trained on (its vocabulary must match the checkpoint's).
    #[arg(long, default_value = DEFAULT_CORPUS)]
    corpus: PathBuf,
    /// Batches per split (the same seeded batches `leam train --eval-iters N` uses).
    #[arg(long, default_value_t = 200)]
    eval_iters: usize,
    /// `cpu`, `wgpu` or `auto`.
    #[arg(long, default_value = "auto")]
    backend: String,
}

/// `leam eval`: re-measure a checkpoint's train and validation loss, so that anyone holding the
/// checkpoint and the corpus can check a claimed loss (with more batches than training used).
pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if args.eval_iters == 0 || args.eval_iters > leam_compute::train::EVAL_ITERS_MAX {
        anyhow::bail!(
            "--eval-iters must be in 1..={}, found {}",
            leam_compute::train::EVAL_ITERS_MAX,
            args.eval_iters
        );
    }
    let ckpt = Checkpoint::load(&args.checkpoint)?;
    let corpus = Corpus::load(&args.corpus)?;
    if corpus.vocab != ckpt.vocab {
        anyhow::bail!(
            "{}: its vocabulary ({} characters) differs from the checkpoint's ({} characters); \
             evaluate on the corpus the model was trained on",
            args.corpus.display(),
            corpus.vocab.len(),
            ckpt.vocab.len()
        );
    }
    let kernels = backend::select(&args.backend)?;
    let state = &ckpt.state;
    let train_loss = state.evaluate(
        kernels.as_ref(),
        &corpus.train,
        "training split",
        STREAM_EVAL_TRAIN,
        args.eval_iters,
    )?;
    let val_loss = state.evaluate(
        kernels.as_ref(),
        &corpus.val,
        "validation split",
        STREAM_EVAL_VAL,
        args.eval_iters,
    )?;
    println!(
        "step {}, {} batches of {}x{} per split, backend {}",
        state.step,
        args.eval_iters,
        state.batch_size,
        state.model.block_size,
        kernels.name()
    );
    println!("params {}", hex::encode(state.params_commitment()));
    println!("train_loss {train_loss:.4}");
    println!("val_loss {val_loss:.4}");
    Ok(ExitCode::SUCCESS)
}

pub fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let f = &args.flags;
    let corpus = Corpus::load(&args.corpus)?;
    // Model and optimizer defaults are nanoGPT's train_shakespeare_char CPU settings, which
    // the preset names; the preset also evaluates on 20 batches as nanoGPT's CPU command.
    let eval_iters = f.eval_iters.unwrap_or(match f.preset {
        Some(Preset::NanogptCpu) => 20,
        None => 200,
    });
    let model = Config {
        vocab: corpus.vocab.len(),
        n_layer: f.n_layer.unwrap_or(4),
        n_head: f.n_head.unwrap_or(4),
        n_embd: f.n_embd.unwrap_or(128),
        block_size: f.block_size.unwrap_or(64),
    };
    let batch_size = f.batch_size.unwrap_or(12);
    let max_iters = f.max_iters.unwrap_or(2000);
    let mut hyper = Hyper::nanogpt_cpu();
    hyper.lr_decay_iters = f.lr_decay_iters.unwrap_or(max_iters);
    if let Some(v) = f.learning_rate {
        hyper.learning_rate = v;
    }
    if let Some(v) = f.min_lr {
        hyper.min_lr = v;
    }
    if let Some(v) = f.warmup_iters {
        hyper.warmup_iters = v;
    }
    if let Some(v) = f.weight_decay {
        hyper.weight_decay = v;
    }
    if let Some(v) = f.beta2 {
        hyper.beta2 = v;
    }
    let kernels = backend::select(&args.backend)?;
    let mut state = TrainState::new(model, hyper.to_fixed()?, batch_size, f.seed)?;
    println!(
        "backend {} | {} parameters | n_layer {} n_head {} n_embd {} block_size {} batch_size {} max_iters {} | {} train / {} val tokens, vocab {}",
        kernels.name(),
        model.n_params(),
        model.n_layer,
        model.n_head,
        model.n_embd,
        model.block_size,
        batch_size,
        max_iters,
        corpus.train.len(),
        corpus.val.len(),
        model.vocab
    );
    let opts = LoopOptions {
        max_iters,
        eval_interval: f.eval_interval,
        eval_iters,
        progress: !args.quiet,
    };
    let started = std::time::Instant::now();
    let curve = run(kernels.as_ref(), &mut state, &corpus, &opts, &mut |p| {
        println!(
            "step {}: train loss {:.4}, val loss {:.4} ({:.1} s)",
            p.step,
            p.train_loss,
            p.val_loss,
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    })?;
    if let Some(out) = &args.out {
        Checkpoint {
            vocab: corpus.vocab.clone(),
            state: state.clone(),
        }
        .save(out)
        .with_context(|| format!("writing checkpoint {}", out.display()))?;
        println!("checkpoint {}", out.display());
    }
    println!("params {}", hex::encode(state.params_commitment()));
    match curve.last() {
        Some(p) => println!("val_loss {:.4}", p.val_loss),
        None => println!("val_loss nan"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sample(args: SampleArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::load(&args.checkpoint)?;
    let kernels = backend::select(&args.backend)?;
    let text = generate(
        kernels.as_ref(),
        &ckpt,
        &args.prompt,
        args.tokens,
        args.seed,
    )?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
