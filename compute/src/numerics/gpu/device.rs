//! Adapter enumeration, device creation, device fingerprint, buffers and the pipeline cache.
//!
//! Every adapter wgpu can see is listed, software ones included (Mesa llvmpipe through the GL
//! backend, lavapipe through Vulkan), because the software adapters are what CI and partners
//! without a GPU run. A device is always created with the adapter's own limits, and every
//! dispatch is checked against them before it is recorded: a shape that does not fit is a
//! [`GpuError::Limit`], never a hang.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::shaders::{Shader, SHADERS};

/// The longest one GPU operation may take before it is reported as a hang, in seconds.
/// Large matmuls on llvmpipe take seconds; anything near this bound is a driver fault.
pub const OP_TIMEOUT_S: u64 = 300;

/// Environment variable that picks the adapter for [`super::GpuKernels::new`]: an index into
/// [`list_adapters`], or a case-insensitive substring of the backend or adapter name
/// (`vulkan`, `gl`, `llvmpipe`, `lavapipe`, …).
pub const ADAPTER_ENV: &str = "LEAM_WGPU_ADAPTER";

/// Errors of the wgpu backend itself (as opposed to bad kernel arguments).
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched (or none exists on this machine).
    #[error("no wgpu adapter {wanted}; adapters present: [{present}]")]
    NoAdapter {
        /// What was asked for (`"at all"`, `"matching 'vulkan'"`, …).
        wanted: String,
        /// The adapters that exist, one `index: backend name` per entry.
        present: String,
    },
    /// The adapter cannot run compute shaders (e.g. a GLES 3.0 context).
    #[error("adapter '{adapter}' cannot run compute shaders (downlevel flags {flags})")]
    NoCompute {
        /// Adapter name.
        adapter: String,
        /// The downlevel flags it reported.
        flags: String,
    },
    /// `request_device` failed.
    #[error("adapter '{adapter}': device request failed: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        reason: String,
    },
    /// A shape exceeds one of the adapter's limits.
    #[error("{what}: requested {requested}, adapter maximum {max}")]
    Limit {
        /// Which limit (e.g. `"storage buffer binding bytes"`).
        what: &'static str,
        /// What the operation would need.
        requested: u64,
        /// What the adapter allows.
        max: u64,
    },
    /// wgpu reported a validation or out-of-memory error while recording or running an op.
    #[error("kernel {kernel}: wgpu error: {reason}")]
    Device {
        /// Kernel name.
        kernel: &'static str,
        /// wgpu's message.
        reason: String,
    },
    /// The device was lost (driver reset, out of memory, …); the `GpuKernels` must be recreated.
    #[error("wgpu device lost")]
    Lost,
    /// An operation did not finish within [`OP_TIMEOUT_S`].
    #[error("kernel {kernel}: GPU did not finish within {timeout_s} s")]
    Timeout {
        /// Kernel name.
        kernel: &'static str,
        /// The bound that was exceeded.
        timeout_s: u64,
    },
    /// Reading a result back failed.
    #[error("kernel {kernel}: reading the result back failed: {reason}")]
    Readback {
        /// Kernel name.
        kernel: &'static str,
        /// wgpu's reason.
        reason: String,
    },
}

/// One adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Position in [`list_adapters`] (stable for one machine and driver set).
    pub index: usize,
    /// `vulkan`, `gl`, `metal`, `dx12`.
    pub backend: String,
    /// Adapter name (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// PCI vendor id (0 for software adapters on some backends).
    pub vendor: u32,
    /// PCI device id.
    pub device: u32,
    /// `Cpu`, `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Other`.
    pub device_type: String,
    /// Driver name.
    pub driver: String,
    /// Driver version text.
    pub driver_info: String,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} '{}' ({}, driver '{}' {})",
            self.index, self.backend, self.name, self.device_type, self.driver, self.driver_info
        )
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    wgpu::Instance::new(desc)
}

fn summarize(index: usize, info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        index,
        backend: info.backend.to_str().to_string(),
        name: info.name.clone(),
        vendor: info.vendor,
        device: info.device,
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
    }
}

fn all_adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter on this machine, on every backend, software adapters included.
pub fn list_adapters() -> Vec<AdapterSummary> {
    all_adapters()
        .iter()
        .enumerate()
        .map(|(i, a)| summarize(i, &a.get_info()))
        .collect()
}

/// Which adapter to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The best one: a discrete GPU, then integrated, then virtual, then software; Vulkan first.
    Auto,
    /// Position in [`list_adapters`].
    Index(usize),
    /// First adapter whose `backend name` contains this (case-insensitive).
    Matching(String),
}

impl AdapterChoice {
    /// Parses `auto`, an index, or a substring.
    pub fn parse(text: &str) -> Self {
        let t = text.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("auto") {
            AdapterChoice::Auto
        } else if let Ok(i) = t.parse::<usize>() {
            AdapterChoice::Index(i)
        } else {
            AdapterChoice::Matching(t.to_ascii_lowercase())
        }
    }

    /// From [`ADAPTER_ENV`], or `Auto` when unset.
    pub fn from_env() -> Self {
        std::env::var(ADAPTER_ENV)
            .map(|v| Self::parse(&v))
            .unwrap_or(AdapterChoice::Auto)
    }
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let be = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (ty, be)
}

pub(crate) fn pick_adapter(choice: &AdapterChoice) -> Result<(usize, wgpu::Adapter), GpuError> {
    let adapters = all_adapters();
    let present = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let info = a.get_info();
                format!("{i}: {} {}", info.backend.to_str(), info.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match choice {
        AdapterChoice::Auto => adapters
            .iter()
            .enumerate()
            .filter(|(_, a)| supports_compute(a))
            .min_by_key(|(i, a)| (rank(&a.get_info()), *i))
            .map(|(i, _)| i),
        AdapterChoice::Index(i) => (*i < adapters.len()).then_some(*i),
        AdapterChoice::Matching(s) => adapters.iter().position(|a| {
            let info = a.get_info();
            format!("{} {}", info.backend.to_str(), info.name)
                .to_ascii_lowercase()
                .contains(s.as_str())
        }),
    };
    match found {
        Some(i) => {
            let p = present();
            let adapter = adapters.into_iter().nth(i).ok_or(GpuError::NoAdapter {
                wanted: format!("{choice:?}"),
                present: p,
            })?;
            Ok((i, adapter))
        }
        None => Err(GpuError::NoAdapter {
            wanted: match choice {
                AdapterChoice::Auto => "at all".to_string(),
                AdapterChoice::Index(i) => format!("with index {i}"),
                AdapterChoice::Matching(s) => format!("matching '{s}'"),
            },
            present: present(),
        }),
    }
}

fn supports_compute(adapter: &wgpu::Adapter) -> bool {
    adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
}

/// What identifies the numerics of a device: the adapter and driver, and the exact shader
/// sources. Two runs with equal fingerprints run the same code on the same driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFingerprint {
    /// The adapter.
    pub adapter: AdapterSummary,
    /// `(shader name, hex SHA-256 of its WGSL source)`, in [`SHADERS`] order.
    pub shader_sha256: Vec<(&'static str, String)>,
}

impl DeviceFingerprint {
    fn new(adapter: AdapterSummary) -> Self {
        let shader_sha256 = SHADERS
            .iter()
            .map(|s| (s.name, hex::encode(Sha256::digest(s.source.as_bytes()))))
            .collect();
        DeviceFingerprint {
            adapter,
            shader_sha256,
        }
    }

    /// SHA-256 over the stable string form: one value to compare across partners.
    pub fn digest_hex(&self) -> String {
        hex::encode(Sha256::digest(self.to_string().as_bytes()))
    }
}

impl fmt::Display for DeviceFingerprint {
    /// Stable multi-line form: `key value` lines, shader lines in [`SHADERS`] order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.adapter;
        writeln!(f, "backend {}", a.backend)?;
        writeln!(f, "adapter {}", a.name)?;
        writeln!(f, "vendor 0x{:04x}", a.vendor)?;
        writeln!(f, "device 0x{:04x}", a.device)?;
        writeln!(f, "device_type {}", a.device_type)?;
        writeln!(f, "driver {}", a.driver)?;
        write!(f, "driver_info {}", a.driver_info)?;
        for (name, sha) in &self.shader_sha256 {
            write!(f, "\nshader {name} {sha}")?;
        }
        Ok(())
    }
}

/// Outcome of one `map_async` callback (`None` until it ran).
type MapStatus = Option<Result<(), String>>;

/// Usage classes of pooled buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pool {
    /// Storage buffer, written by the queue or a kernel, copied from.
    Storage,
    /// Host-readable staging buffer.
    Readback,
    /// Uniform buffer.
    Uniform,
}

impl Pool {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            Pool::Storage => U::STORAGE | U::COPY_DST | U::COPY_SRC,
            Pool::Readback => U::MAP_READ | U::COPY_DST,
            Pool::Uniform => U::UNIFORM | U::COPY_DST,
        }
    }
}

/// Smallest buffer the pool hands out, in bytes (also the size-class granularity).
const POOL_BYTES_MIN: u64 = 256;
/// Pooled buffers kept per size class; more are dropped (a training step frees dozens of
/// device-resident activations of one class at once, and reuses them in the next step).
const POOL_PER_CLASS_MAX: usize = 64;

/// Free buffers by `(pool, size class)`, and the buffers released while a batch of recorded
/// commands is not yet submitted: those may still be read or written by the batch, so they
/// return to the free lists only when it has run (a buffer handed out again inside the batch
/// could get a `queue.write_buffer`, which the queue applies before the whole batch).
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<(Pool, u64), Vec<wgpu::Buffer>>>,
    /// `Some` while a batch is open.
    held: Mutex<Option<Vec<(Pool, wgpu::Buffer)>>>,
}

fn recycle_into(pools: &BufferPool, pool: Pool, buffers: impl IntoIterator<Item = wgpu::Buffer>) {
    let mut held = pools.held.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = held.as_mut() {
        h.extend(buffers.into_iter().map(|b| (pool, b)));
        return;
    }
    drop(held);
    free_into(pools, buffers.into_iter().map(|b| (pool, b)));
}

fn free_into(pools: &BufferPool, buffers: impl IntoIterator<Item = (Pool, wgpu::Buffer)>) {
    let mut free = pools.free.lock().unwrap_or_else(|p| p.into_inner());
    for (pool, b) in buffers {
        let v = free.entry((pool, b.size())).or_default();
        if v.len() < POOL_PER_CLASS_MAX {
            v.push(b);
        }
    }
}

/// Commands recorded but not yet submitted, with the requantization keys to read when they
/// are (see [`Gpu::record`]).
struct Batch {
    encoder: wgpu::CommandEncoder,
    keys: Vec<(wgpu::Buffer, u64, Arc<OnceLock<u32>>)>,
}

/// Most records (ops, and the exponent dispatches around them) in one batch before it is
/// submitted anyway: bounds the buffers it holds. A nanoGPT-preset step records about 600.
pub(crate) const BATCH_OPS_MAX: usize = 1024;

/// A storage buffer owned by device-resident data; returned to the pool on drop.
pub(crate) struct DevBuf {
    buf: Option<wgpu::Buffer>,
    pool: Arc<BufferPool>,
}

impl DevBuf {
    /// The buffer (present until drop).
    pub(crate) fn buf(&self) -> &wgpu::Buffer {
        self.buf
            .as_ref()
            .expect("a DevBuf holds its buffer until it is dropped")
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            recycle_into(&self.pool, Pool::Storage, [b]);
        }
    }
}

impl fmt::Debug for DevBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevBuf")
            .field("bytes", &self.buf.as_ref().map(wgpu::Buffer::size))
            .finish()
    }
}

/// A device and its queue, with the pipeline cache and a buffer pool.
pub(crate) struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) fingerprint: DeviceFingerprint,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
    pool: Arc<BufferPool>,
    batch: Mutex<Option<(Batch, usize)>>,
    /// Errors raised outside any error scope (recording from another thread): reported by the
    /// next submission.
    uncaptured: Arc<Mutex<Option<String>>>,
    lost: Arc<AtomicBool>,
    /// Bytes written to the device, bytes read back, queue submissions
    /// ([`crate::numerics::kernels::Traffic`]).
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    submissions: AtomicU64,
    /// A zeroed storage buffer bound where an entry point declares an operand it does not use.
    dummy: wgpu::Buffer,
    /// One op at a time: error scopes are per thread but submissions share the queue. Never
    /// held across a rayon call: the model runs kernels from two `rayon::join` arms at once, and
    /// a worker waiting inside a parallel loop may pick up the other arm (a self-deadlock).
    pub(crate) op_lock: Mutex<()>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.fingerprint.adapter)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    pub(crate) fn open(choice: &AdapterChoice) -> Result<Gpu, GpuError> {
        let (index, adapter) = pick_adapter(choice)?;
        let info = adapter.get_info();
        let summary = summarize(index, &info);
        let caps = adapter.get_downlevel_capabilities();
        if !caps.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            return Err(GpuError::NoCompute {
                adapter: summary.name,
                flags: format!("{:?}", caps.flags),
            });
        }
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("leam-compute"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            GpuError::RequestDevice {
                adapter: summary.name.clone(),
                reason: e.to_string(),
            }
        })?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |_reason, _msg| flag.store(true, Ordering::SeqCst));
        let uncaptured: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        // wgpu zero-initialises new buffers.
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: POOL_BYTES_MIN,
            usage: Pool::Storage.usage(),
            mapped_at_creation: false,
        });
        Ok(Gpu {
            dummy,
            device,
            queue,
            limits,
            fingerprint: DeviceFingerprint::new(summary),
            pipelines: Mutex::new(HashMap::new()),
            pool: Arc::new(BufferPool::default()),
            batch: Mutex::new(None),
            uncaptured,
            lost,
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            op_lock: Mutex::new(()),
        })
    }

    pub(crate) fn check_lost(&self) -> Result<(), GpuError> {
        if self.lost.load(Ordering::SeqCst) {
            Err(GpuError::Lost)
        } else {
            Ok(())
        }
    }

    /// The compute pipeline for `entry` of `shader`, compiled once per device.
    pub(crate) fn pipeline(
        &self,
        shader: &'static Shader,
        entry: &'static str,
    ) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&(shader.name, entry)) {
            return Ok(Arc::clone(p));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Device {
                kernel: shader.name,
                reason: err.to_string(),
            });
        }
        let p = Arc::new(pipeline);
        cache.insert((shader.name, entry), Arc::clone(&p));
        Ok(p)
    }

    /// A buffer of at least `bytes` bytes from the pool (contents unspecified).
    pub(crate) fn buffer(&self, pool: Pool, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let class = bytes.max(POOL_BYTES_MIN).next_power_of_two();
        if class > self.limits.max_buffer_size {
            return Err(GpuError::Limit {
                what: "buffer bytes",
                requested: bytes,
                max: self.limits.max_buffer_size,
            });
        }
        if pool == Pool::Storage && bytes > self.limits.max_storage_buffer_binding_size {
            return Err(GpuError::Limit {
                what: "storage buffer binding bytes",
                requested: bytes,
                max: self.limits.max_storage_buffer_binding_size,
            });
        }
        let mut pools = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = pools.get_mut(&(pool, class)).and_then(Vec::pop) {
            return Ok(b);
        }
        drop(pools);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: class,
            usage: pool.usage(),
            mapped_at_creation: false,
        }))
    }

    /// Returns buffers to the pool for the next op.
    pub(crate) fn recycle(&self, pool: Pool, buffers: impl IntoIterator<Item = wgpu::Buffer>) {
        recycle_into(&self.pool, pool, buffers);
    }

    /// Wraps a pooled storage buffer that outlives the op that wrote it (a device-resident
    /// tensor): it goes back to the pool when the last handle is dropped.
    pub(crate) fn keep(&self, buf: wgpu::Buffer) -> Arc<DevBuf> {
        Arc::new(DevBuf {
            buf: Some(buf),
            pool: Arc::clone(&self.pool),
        })
    }

    /// Upload `data` into a pooled storage buffer.
    pub(crate) fn upload(&self, data: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        let b = self.buffer(Pool::Storage, data.len() as u64)?;
        if !data.is_empty() {
            self.queue.write_buffer(&b, 0, data);
            self.uploaded
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(b)
    }

    /// The zeroed buffer bound for unused operands.
    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    /// Counts bytes written to the device by a `queue.write_buffer` of the caller's.
    pub(crate) fn count_upload(&self, bytes: u64) {
        self.uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Upload a uniform block.
    pub(crate) fn uniform(&self, data: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        let b = self.buffer(Pool::Uniform, data.len() as u64)?;
        self.queue.write_buffer(&b, 0, data);
        self.uploaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    /// The traffic counted so far.
    pub(crate) fn traffic(&self) -> crate::numerics::kernels::Traffic {
        crate::numerics::kernels::Traffic {
            uploaded_bytes: self.uploaded.load(Ordering::Relaxed),
            downloaded_bytes: self.downloaded.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
        }
    }

    /// Checks a dispatch against `max_compute_workgroups_per_dimension`.
    pub(crate) fn check_groups(
        &self,
        what: &'static str,
        groups: [u64; 3],
    ) -> Result<[u32; 3], GpuError> {
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let mut out = [0u32; 3];
        for (o, g) in out.iter_mut().zip(groups) {
            if g > max {
                return Err(GpuError::Limit {
                    what,
                    requested: g,
                    max,
                });
            }
            *o = u32::try_from(g).map_err(|_| GpuError::Limit {
                what,
                requested: g,
                max,
            })?;
        }
        Ok(out)
    }

    /// Appends commands to the open batch (opening one): they run at the next [`Gpu::flush`].
    /// While a batch is open, released buffers are held until it has run. The caller holds
    /// `op_lock`.
    pub(crate) fn record(
        &self,
        kernel: &'static str,
        f: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<(), GpuError> {
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        if batch.is_none() {
            *self.pool.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
            let encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some(kernel),
                });
            *batch = Some((
                Batch {
                    encoder,
                    keys: Vec::new(),
                },
                0,
            ));
        }
        let (b, ops) = batch.as_mut().expect("a batch was just opened");
        f(&mut b.encoder);
        *ops += 1;
        let full = *ops >= BATCH_OPS_MAX;
        drop(batch);
        if full {
            self.flush_locked(kernel, &[])?;
        }
        Ok(())
    }

    /// Registers the key buffer of the op just recorded: the returned cell gets its value when
    /// the batch runs. The caller holds `op_lock`, and releases `key` to the pool only after.
    pub(crate) fn defer_key(&self, key: &wgpu::Buffer) -> Arc<OnceLock<u32>> {
        self.defer_word(key, 0)
    }

    /// [`Gpu::defer_key`] for the 32-bit word at byte `offset` of `buf`.
    pub(crate) fn defer_word(&self, buf: &wgpu::Buffer, offset: u64) -> Arc<OnceLock<u32>> {
        let cell = Arc::new(OnceLock::new());
        let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
        match batch.as_mut() {
            Some((b, _)) => b.keys.push((buf.clone(), offset, Arc::clone(&cell))),
            // Recording flushed the batch (it was full): the word is final, read it now.
            None => {
                drop(batch);
                if let Ok(bytes) = self.flush_locked("key", &[(buf, offset + 4)]) {
                    let at = offset as usize;
                    let _ = cell.set(bytemuck::pod_read_unaligned(&bytes[0][at..at + 4]));
                }
            }
        }
        cell
    }

    /// Submits the open batch (if any) with copies of its pending keys and of `reads`, waits,
    /// fills the keys' cells and returns the bytes of `reads`. Takes `op_lock`.
    pub(crate) fn sync(&self, kernel: &'static str) -> Result<(), GpuError> {
        let _lock = self.op_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(kernel, &[]).map(|_| ())
    }

    /// [`Gpu::sync`] with reads, for a caller that holds `op_lock`.
    pub(crate) fn flush_locked(
        &self,
        kernel: &'static str,
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        let taken = self.batch.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (mut encoder, keys) = match taken {
            Some((b, _)) => (b.encoder, b.keys),
            None if reads.is_empty() => return Ok(Vec::new()),
            None => (
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some(kernel),
                    }),
                Vec::new(),
            ),
        };
        let result = (|| {
            // Every pending key, gathered into one buffer: one read-back for the batch.
            let gathered = if keys.is_empty() {
                None
            } else {
                let g = self.buffer(Pool::Storage, keys.len() as u64 * 4)?;
                for (i, (k, offset, _)) in keys.iter().enumerate() {
                    encoder.copy_buffer_to_buffer(k, *offset, &g, i as u64 * 4, 4);
                }
                Some(g)
            };
            let mut all: Vec<(&wgpu::Buffer, u64)> = reads.to_vec();
            if let Some(g) = &gathered {
                all.push((g, keys.len() as u64 * 4));
            }
            let mut out = self.finish(kernel, encoder, self.scopes(), &all)?;
            if let Some(reason) = self
                .uncaptured
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return Err(GpuError::Device { kernel, reason });
            }
            if let Some(g) = gathered {
                let bytes = out.pop().unwrap_or_default();
                let values: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
                for ((_, _, cell), v) in keys.iter().zip(values) {
                    let _ = cell.set(v);
                }
                self.recycle(Pool::Storage, [g]);
            }
            Ok(out)
        })();
        // The batch has run (or failed): what it held is free again.
        let held = self
            .pool
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        free_into(&self.pool, held.into_iter().flatten());
        result
    }

    /// Submits `encoder` (after appending copies of `reads` into staging buffers), waits, and
    /// returns the bytes of each `(buffer, byte length)` in `reads`. Validation and
    /// out-of-memory errors raised since `scope` was pushed are reported as
    /// [`GpuError::Device`].
    pub(crate) fn finish(
        &self,
        kernel: &'static str,
        mut encoder: wgpu::CommandEncoder,
        scopes: (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard),
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        let mut staging = Vec::with_capacity(reads.len());
        for (buf, len) in reads {
            let len4 = len.div_ceil(4) * 4;
            let s = self.buffer(Pool::Readback, len4.max(4))?;
            if len4 > 0 {
                encoder.copy_buffer_to_buffer(buf, 0, &s, 0, len4);
            }
            staging.push((s, *len, len4));
        }
        let index = self.queue.submit([encoder.finish()]);
        self.submissions.fetch_add(1, Ordering::Relaxed);
        self.downloaded.fetch_add(
            staging.iter().map(|(_, _, len4)| *len4).sum::<u64>(),
            Ordering::Relaxed,
        );
        let (oom, validation) = scopes;
        let err_v = pollster::block_on(validation.pop());
        let err_o = pollster::block_on(oom.pop());
        if let Some(e) = err_v.or(err_o) {
            return Err(GpuError::Device {
                kernel,
                reason: e.to_string(),
            });
        }
        let results: Arc<Mutex<Vec<MapStatus>>> = Arc::new(Mutex::new(vec![None; staging.len()]));
        for (i, (s, _, len4)) in staging.iter().enumerate() {
            if *len4 == 0 {
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(Ok(()));
                continue;
            }
            let r = Arc::clone(&results);
            s.slice(0..*len4)
                .map_async(wgpu::MapMode::Read, move |res| {
                    r.lock().unwrap_or_else(|p| p.into_inner())[i] =
                        Some(res.map_err(|e| e.to_string()));
                });
        }
        let poll = self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(Duration::from_secs(OP_TIMEOUT_S)),
        });
        self.check_lost()?;
        if let Err(e) = poll {
            return Err(match e {
                wgpu::PollError::Timeout => GpuError::Timeout {
                    kernel,
                    timeout_s: OP_TIMEOUT_S,
                },
                other => GpuError::Device {
                    kernel,
                    reason: other.to_string(),
                },
            });
        }
        let mut out = Vec::with_capacity(staging.len());
        let statuses = results.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((s, len, len4), status) in staging.iter().zip(statuses) {
            match status {
                Some(Ok(())) => {}
                Some(Err(reason)) => return Err(GpuError::Readback { kernel, reason }),
                None => {
                    return Err(GpuError::Readback {
                        kernel,
                        reason: "map callback did not run after the wait".into(),
                    })
                }
            }
            if *len4 == 0 {
                out.push(Vec::new());
                continue;
            }
            let bytes = {
                let view =
                    s.slice(0..*len4)
                        .get_mapped_range()
                        .map_err(|e| GpuError::Readback {
                            kernel,
                            reason: e.to_string(),
                        })?;
                view[..*len as usize].to_vec()
            };
            s.unmap();
            out.push(bytes);
        }
        self.recycle(Pool::Readback, staging.into_iter().map(|(s, _, _)| s));
        Ok(out)
    }

    /// Pushes the two error scopes [`Gpu::finish`] pops.
    pub(crate) fn scopes(&self) -> (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard) {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        (oom, validation)
    }
}
