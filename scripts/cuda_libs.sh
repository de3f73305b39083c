# Sourced (not run) by the GPU-host scripts (gpu_check.sh, gpu_train.sh): finds the CUDA 13 pip
# libraries and the driver's libcuda, as ../shared/cuda/device_env_check.sh does, and exports
# LD_LIBRARY_PATH with them first (the binary's RUNPATH already names the usual places; this covers
# the rest). Uses $PY (a python that may have the `nvidia` pip packages); sets nothing else.
NV=$([ -n "${PY:-}" ] && timeout 30 "$PY" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
LIBDIRS=""
add_libdir() { [ -d "$1" ] && LIBDIRS="${LIBDIRS:+$LIBDIRS:}$1"; }
[ -n "$NV" ] && { add_libdir "$NV/cu13/lib"; for d in "$NV"/*/lib; do add_libdir "$d"; done; }
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64; do
  [ -e "$d/libcuda.so.1" ] && add_libdir "$d"
done
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+${LIBDIRS:+:}$LD_LIBRARY_PATH}"
