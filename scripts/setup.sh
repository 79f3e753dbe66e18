#!/usr/bin/env bash
# Set up fedhubert on a Debian machine: Debian packages, the pinned venv at .venv, the
# editable package with its `fedhubert` console script. Idempotent: on a ready machine it
# only re-links the package (seconds).
#
#   FEDHUBERT_PYTHON=python3.11   interpreter to build the venv from (default: python3)
#   FEDHUBERT_VENV_CACHE=DIR      keep the venv in DIR/<lock hash> and link .venv to it
#                                 (CI uses this so a fresh clone reuses a built venv)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${FEDHUBERT_PYTHON:-python3}
LOCK=requirements/lock.txt
FAIRSEQ_PIN=$(grep -i '^fairseq-fixed==' "$LOCK")

say() { echo "[fedhubert setup] $*"; }
# pip, without the warnings about this machine's unused local index folders.
pip_in() {
    local venv=$1; shift
    "$venv/bin/pip" "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    return "${PIPESTATUS[0]}"
}
die() { echo "[fedhubert setup] ERROR: $*" >&2; exit 1; }

# 1. Python: the pinned stack is verified on 3.11 only.
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH. Install Python 3.11 and run: FEDHUBERT_PYTHON=python3.11 bash scripts/setup.sh"
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$py_version" != "3.11" ]; then
    die "Python $py_version ($(command -v "$PYTHON")) is not supported: the pinned stack (torch 2.8.0, fairseq-fixed 0.12.3.1, s3prl 0.4.18, flwr 1.41) is verified on Python 3.11 only. Install Python 3.11 and run: FEDHUBERT_PYTHON=python3.11 bash scripts/setup.sh"
fi

# 2. Debian packages: espeak-ng and sox make the toy corpus; torchaudio's sox_effects
#    (s3prl's speech_commands reads audio with it) loads libsox.so from libsox-dev.
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
# grep without -q reads all of ldconfig's output: with -q it may exit first, and pipefail fails the check
ldconfig -p | grep -E 'libsox\.so( |$)' >/dev/null || missing+=(libsox-dev)
# openssl and ssh-keygen make the TLS certificates and SuperNode keys (recipes/flower/)
command -v openssl >/dev/null || missing+=(openssl)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}. Run: sudo apt-get install -y ${missing[*]} (then this script again)"
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. The venv, rebuilt only when the lock file changes.
lock_hash=$(sha256sum "$LOCK" | cut -c1-16)
venv_dir=.venv
if [ -n "${FEDHUBERT_VENV_CACHE:-}" ]; then
    venv_dir="$FEDHUBERT_VENV_CACHE/venv-$lock_hash"
fi
stamp="$venv_dir/.fedhubert-lock"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_hash" ]; then
    say "venv $venv_dir matches $LOCK"
else
    if [ -f "$stamp" ]; then
        say "syncing venv $venv_dir with the changed $LOCK"
    else
        say "building venv $venv_dir from $LOCK (first time: ~6 min, ~6.5 GB)"
        rm -rf "$venv_dir"
        "$PYTHON" -m venv "$venv_dir"
    fi
    pip_in "$venv_dir" install -q --upgrade $(grep -E '^(pip|setuptools|wheel)==' requirements/build.txt)
    # fairseq-fixed is an sdist that must be compiled against the pinned torch, so it
    # is installed after everything else, without build isolation.
    grep -vi '^fairseq-fixed==' "$LOCK" > "$venv_dir/lock-without-fairseq.txt"
    pip_in "$venv_dir" install -q --no-deps -r "$venv_dir/lock-without-fairseq.txt"
    pip_in "$venv_dir" install -q --no-deps --no-build-isolation "$FAIRSEQ_PIN"
    pip_in "$venv_dir" check
    echo "$lock_hash" > "$stamp"
fi
if [ "$venv_dir" != .venv ]; then
    [ -L .venv ] || [ ! -e .venv ] || die ".venv exists and is not a link; remove it or unset FEDHUBERT_VENV_CACHE"
    ln -sfn "$venv_dir" .venv
fi

# 4. Development tools (ruff), pinned in requirements/dev.txt on top of the lock: a bump does not rebuild the venv.
ruff_pin=$(grep -i '^ruff==' requirements/dev.txt)
if [ "$(.venv/bin/ruff --version 2>/dev/null || true)" != "ruff ${ruff_pin#*==}" ]; then
    say "installing $ruff_pin"
    pip_in .venv install -q --no-deps -r requirements/dev.txt
fi

# 5. s3prl's source-tree corpus readers (SUPERB PR and SF), which its pip package lacks, unpacked beside the venv's
#    packages once (requirements/s3prl-source.txt says why 0.3.0's sdist); S3PRL_SOURCE, when set, is used instead.
source_tree=.venv/share/s3prl-source
if [ ! -f "$source_tree/s3prl/downstream/ctc/corpus/libriphone.py" ]; then
    say "unpacking s3prl's source-tree corpus readers into $source_tree"
    download=$(mktemp -d)
    pip_in .venv download -q --no-deps --no-binary :all: --require-hashes -r requirements/s3prl-source.txt -d "$download"
    rm -rf "$source_tree" && mkdir -p "$source_tree"
    tar xzf "$download"/s3prl-*.tar.gz -C "$source_tree" --strip-components=1
    rm -rf "$download"
fi

# 6. The project itself, editable, unless .venv already imports it from this checkout.
here=$(pwd -P)
installed=$(cd / && "$here/.venv/bin/python" -c '
import importlib.util as u
for name in ("fedhubert_plugin", "upstream"):
    s = u.find_spec(name)
    print(s.submodule_search_locations[0] if s else "")' 2>/dev/null || true)
if [ "$installed" != "$(printf '%s\n%s' "$here/fedhubert_plugin" "$here/upstream")" ] || [ ! -x .venv/bin/fedhubert ]; then
    say "installing fedhubert (editable) from $here"
    pip_in .venv install -q --no-deps --no-build-isolation -e .
fi
say "ready: $(.venv/bin/python --version), fedhubert at .venv/bin/fedhubert"
