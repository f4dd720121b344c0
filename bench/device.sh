#!/usr/bin/env bash
# Issue 11 §3 on a lent GPU machine (no Rust there): the `leam` binary built on the
# development machine travels in .devicebin/ (with a Vulkan loader and glvnd's libEGL, used
# only where the machine has none). Stages run in order of importance, each under its own
# timeout; everything goes to $OUT/*.log and a summary table ends the output.
#   run: bash bench/device.sh [stage…]   (stages: probe selftest bench step train torch)
set -u
OUT=${OUT:-/tmp/leam-device}; mkdir -p "$OUT"
B=$PWD/.devicebin/leam
STAGES=${*:-probe selftest step train torch bench}
has() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }
t() { local s=$SECONDS; local name=$1; shift; timeout "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $((SECONDS - s))s" | tee -a "$OUT/summary.txt"; }

# Vulkan: the NVIDIA driver's ICD lives in libGLX_nvidia.so.0; point the loader at it when the
# image names no ICD. The carried loader and libEGL only fill what the image lacks.
NV=$(ls -d /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu 2>/dev/null | head -2 | tr '\n' ':')
export LD_LIBRARY_PATH="${NV}${LD_LIBRARY_PATH:-}"
ldconfig -p | grep -q libvulkan.so.1 || export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$PWD/.devicebin/lib"
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
  GLX=$(ls /usr/local/nvidia/lib64/libGLX_nvidia.so.0 /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 2>/dev/null | head -1)
  if [ -n "$GLX" ]; then
    printf '{"file_format_version":"1.0.1","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' "$GLX" >/tmp/nvidia_icd.json
    export VK_DRIVER_FILES=/tmp/nvidia_icd.json VK_ICD_FILENAMES=/tmp/nvidia_icd.json
  fi
fi
if has probe; then
  { uname -a; nproc; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,pcie.link.gen.current,pcie.link.width.current --format=csv
    ls -la /usr/local/nvidia/lib64 2>&1 | grep -iE 'vulkan|glx|egl|nvidia-gl' ; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/share/glvnd/egl_vendor.d 2>&1
    ldconfig -p | grep -iE 'vulkan|libEGL'; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
    ldd "$B"; } >"$OUT/probe.log" 2>&1
  t adapters 60 env RUST_LOG=wgpu_hal=info,wgpu_core=info "$B" compute selftest --json
fi
has selftest && t selftest 90 "$B" compute selftest
if has step; then
  t step-cpu 90 "$B" compute bench --train-step --backend cpu
  t step-wgpu 90 "$B" compute bench --train-step --backend wgpu
  # The path before device-resident tensors (every kernel call uploads and reads back), same run.
  t step-wgpu-host 120 "$B" compute bench --train-step --backend wgpu --host-tensors
fi
if has train; then
  t train-cpu 180 "$B" train --preset nanogpt-cpu --backend cpu --corpus data/tinyshakespeare.txt
  t train-wgpu 90 "$B" train --preset nanogpt-cpu --backend wgpu --corpus data/tinyshakespeare.txt --max-iters 200 --eval-interval 0
  t train-wgpu-full 300 "$B" train --preset nanogpt-cpu --backend wgpu --corpus data/tinyshakespeare.txt
fi
has torch && t torch-cpu 200 python3 bench/nanogpt_torch.py --device cpu
has bench && t bench 120 "$B" compute bench --backend auto --kernels --reps 3
echo "== summary"; cat "$OUT/summary.txt"
for f in "$OUT"/selftest.log "$OUT"/step-*.log "$OUT"/train-*.log "$OUT"/torch-cpu.log; do
  [ -f "$f" ] && { echo "== $f"; grep -E 'PASS|FAIL|bytes_per_step|session|mean|wall|val|step 2000|GOP|adapter|backend|params' "$f" | tail -8; }
done
