#!/usr/bin/env bash
# Creates the virtualenvs of the GRPO benchmark's peers (benchmarks/grpo.py).
#
#   bash benchmarks/peers/setup.sh              # trl and tunix
#   bash benchmarks/peers/setup.sh tunix        # one of them
#
# Each peer gets a virtualenv of its own under $REASONJAX_PEERS (default
# ~/.cache/reasonjax/peers/<peer>), so that its pins never touch reasonjax's environment:
#   trl    pip install trl torch==2.13.0 transformers
#   tunix  pip install google-tunix         (CPU jax comes with it)
# torch is held at 2.13.0 in both through a constraints file: pip then takes the CPU wheel that
# PIP_FIND_LINKS offers, where any other torch requirement would pull the multi-GB CUDA build.
# A venv is reused when it exists; delete its folder to rebuild it.
set -euo pipefail

root="${REASONJAX_PEERS:-$HOME/.cache/reasonjax/peers}"
python="${PYTHON:-python3}"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(trl tunix)
mkdir -p "$root"
constraints="$root/constraints.txt"
echo "torch==2.13.0" > "$constraints"

for peer in "${peers[@]}"; do
  case "$peer" in
    trl) packages=(trl "torch==2.13.0" transformers) ;;
    tunix) packages=(google-tunix) ;;
    *) echo "unknown peer '$peer'; valid: trl tunix" >&2; exit 2 ;;
  esac
  venv="$root/$peer"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  echo "== $peer: pip install ${packages[*]} into $venv"
  PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install --quiet "${packages[@]}"
  # A CUDA build would bring nvidia-* wheels: refuse to leave such a venv looking usable.
  if "$venv/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "$peer: pip pulled CUDA packages (nvidia-*); remove $venv and check the pins" >&2
    exit 1
  fi
  "$venv/bin/python" -m pip list 2>/dev/null \
    | grep -iE '^(trl|torch|transformers|accelerate|google-tunix|jax|jaxlib|flax) ' || true
done
