# Sourced by the device scripts (device_run.sh, issue20_fork.sh) in the repository root: the
# environment every run on the device machine shares, the CIFAR-10 JPEG archive unpacked once per
# machine, and the suite installed from the tree the call sent (without dependencies: the machine has
# them). `device_install baselines` also installs ./baselines, for a run of a baseline.
DATA=${DATA:-.data/cifar10-jpeg}
export PYTHONUNBUFFERED=1 JDCL_BENCH_CACHE=$PWD/.cache/jb TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor-cache
export JDCL_BENCH_TENSORBOARD=0

device_install() {
  [ -d "$DATA/train" ] || (cd "$DATA" && tar xzf cifar10-jpeg.tar.gz)
  local editable=(-e .)
  if [ "${1:-}" = baselines ]; then editable+=(-e ./baselines); fi
  python3 -m pip install -q --no-deps --no-build-isolation "${editable[@]}"
}
