#!/usr/bin/env python3
"""Makes PyPI's CUDA build of torch importable on a machine without CUDA, for CPU-only use.

PyPI's Linux torch wheel links against ~15 NVIDIA libraries (cuBLAS, cuDNN, NCCL...) that its
dependencies bring in as 3+ GB of wheels. For CPU tensors none of their code runs, but the dynamic
loader needs each library, with the symbol versions torch asks for, and Python loads extensions
with RTLD_NOW, so every symbol must resolve. This script reads the undefined symbols of
torch/lib/*.so and compiles tiny link-only stand-ins (every function returns an error code) into
site-packages/nvidia/cu13/lib, where torch's own preloader looks. Never use them with a GPU.

usage: torch_stubs.py SITE_PACKAGES
"""
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

# version node (as in `nm -D`: name@NODE) -> library file (its SONAME)
VERSIONED = {
    "libcublas.so.13": "libcublas.so.13",
    "libcublasLt.so.13": "libcublasLt.so.13",
    "libcudart.so.13": "libcudart.so.13",
    "libcudnn.so.9": "libcudnn.so.9",
    "libcufft.so.12": "libcufft.so.12",
    "libcupti.so.13": "libcupti.so.13",
    "libcusolver.so.12": "libcusolver.so.12",
    "libcusparse.so.12": "libcusparse.so.12",
    "libnvrtc.so.13": "libnvrtc.so.13",
    "NVSHMEM": "libnvshmem_host.so.3",
}
# unversioned symbols, by name prefix -> library (checked in this order)
UNVERSIONED = [
    ("nccl", "libnccl.so.2"),
    ("cusparseLt", "libcusparseLt.so.0"),
    ("cuFile", "libcufile.so.0"),
    ("nvshmem", "libnvshmem_host.so.3"),
    ("cu", "libcuda.so.1"),
]
# names torch's preloader globs for that no symbol comes from
EMPTY = ["libnvrtc-builtins.so.13", "libnvJitLink.so.13", "libnvToolsExt.so.1"]


def undefined_symbols(lib):
    out = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            yield parts[1]


def main():
    site = sys.argv[1]
    torch_lib = os.path.join(site, "torch", "lib")
    libs = sorted(glob.glob(os.path.join(torch_lib, "*.so*")))
    if not libs:
        sys.exit(f"torch_stubs: no torch/lib/*.so under {site}")
    wanted = collections.defaultdict(set)  # soname -> {(symbol, version node or None)}
    for lib in libs:
        for sym in undefined_symbols(lib):
            name, _, node = sym.partition("@")
            node = node.lstrip("@")
            if node in VERSIONED:
                wanted[VERSIONED[node]].add((name, node))
            elif not node:
                for prefix, soname in UNVERSIONED:
                    if name.startswith(prefix) and re.match(r"[A-Za-z_]", name[len(prefix):] or "_"):
                        wanted[soname].add((name, None))
                        break
    for soname in EMPTY:
        wanted.setdefault(soname, set())
    for soname in UNVERSIONED:
        wanted.setdefault(soname[1], set())
    out_dir = os.path.join(site, "nvidia", "cu13", "lib")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for soname, syms in sorted(wanted.items()):
            c = os.path.join(tmp, "stub.c")
            with open(c, "w") as f:
                f.write("int foresight_stub_marker(void){return 0;}\n")
                for name in sorted({n for n, _ in syms}):
                    f.write(f"int {name}(void){{return 999;}}\n")
            cmd = ["gcc", "-shared", "-fPIC", "-o", os.path.join(out_dir, soname), f"-Wl,-soname,{soname}", c]
            nodes = sorted({v for _, v in syms if v})
            if nodes:
                m = os.path.join(tmp, "stub.map")
                with open(m, "w") as f:
                    f.write("".join(f"{n} {{ global: *; }};\n" for n in nodes))
                cmd.append(f"-Wl,--version-script,{m}")
            subprocess.run(cmd, check=True)
            print(f"torch_stubs: {soname}: {len(syms)} symbols", file=sys.stderr)


if __name__ == "__main__":
    main()
