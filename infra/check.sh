#!/usr/bin/env bash
# Static checks for the Terraform under infra/:
#
#   1. terraform fmt -check -recursive infra
#   2. terraform init (offline, from a provider mirror) + validate, for every
#      module under infra/modules and every root under infra/examples, and
#      `terraform test` where a module has tests/*.tftest.hcl (mocked
#      provider: no cloud, no LocalStack)
#   3. checkov on infra/: zero failed checks. A check that does not fit this
#      design is skipped inline, next to the resource, with its reason
#      (`#checkov:skip=CKV_...:why`), so every exception is reviewable.
#
# Nothing is written into the checkout: init/validate run on a copy of infra/
# in a temporary directory (no .terraform/ or .terraform.lock.hcl in the repo).
#
# Without terraform, or without the offline AWS provider, step 1 or 2 cannot
# run: the script says so in a line starting with "SKIPPED:" and carries on
# (exit 0), unless S3I_REQUIRE_TERRAFORM=1, which turns that into a failure
# (for CI machines that are supposed to have them).
#
# Environment:
#   S3I_TF_PLUGIN_DIR      provider mirror (default: /opt/tf-plugins), laid out
#                          as <dir>/registry.terraform.io/hashicorp/aws/<version>/<os_arch>/
#   S3I_REQUIRE_TERRAFORM  1: a missing terraform or provider mirror is an error
#   S3I_CHECKOV_VENV       checkov venv (default: $HOME/.cache/s3-ingest/checkov-venv)
#   S3I_PYTHON             python to build the venv with (default: python3, >= 3.9)
#   TERRAFORM              terraform binary (default: terraform on PATH)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
INFRA="$ROOT/infra"
PLUGIN_DIR="${S3I_TF_PLUGIN_DIR:-/opt/tf-plugins}"
PROVIDER_DIR="$PLUGIN_DIR/registry.terraform.io/hashicorp/aws"
REQUIRE_TERRAFORM="${S3I_REQUIRE_TERRAFORM:-0}"
VENV="${S3I_CHECKOV_VENV:-$HOME/.cache/s3-ingest/checkov-venv}"
PYTHON="${S3I_PYTHON:-python3}"
TERRAFORM="${TERRAFORM:-terraform}"

# Exact pin: a new checkov release adds checks, and `make lint` must not turn
# red on its own. Bump deliberately, together with a clean run of this script.
CHECKOV_PINS=("checkov==3.3.30")
MARKER="$VENV/.s3-ingest-pins"

log() { printf 'infra/check.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

SKIPS=()
skipped() {
  # One clear line on stdout, whatever happens next.
  printf 'SKIPPED: %s\n' "$*"
  SKIPS+=("$*")
  if [[ "$REQUIRE_TERRAFORM" == "1" ]]; then
    die "S3I_REQUIRE_TERRAFORM=1, so that is an error"
  fi
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/s3i-infra-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# A private CLI config: the ambient one (TF_CLI_CONFIG_FILE, ~/.terraformrc)
# may point at a registry mirror or credentials that have no place in a lint
# run, or may not exist at all (Terraform then warns on every command).
printf 'disable_checkpoint = true\n' >"$WORK/terraformrc"
export TF_CLI_CONFIG_FILE="$WORK/terraformrc"
export TF_IN_AUTOMATION=1
export CHECKPOINT_DISABLE=1
export TF_INPUT=0

# --- 1 + 2: terraform ---------------------------------------------------------

terraform_checks() {
  if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
    skipped "terraform not found (set TERRAFORM or put it on PATH); fmt and validate were not run"
    return 0
  fi
  log "$("$TERRAFORM" version | head -n 1)"

  log "terraform fmt -check -recursive infra"
  if ! (cd "$ROOT" && "$TERRAFORM" fmt -check -recursive -diff infra); then
    die "formatting differs; run: terraform fmt -recursive infra"
  fi

  if ! compgen -G "$PROVIDER_DIR/*/*/terraform-provider-aws*" >/dev/null; then
    skipped "no offline AWS provider at $PROVIDER_DIR (set S3I_TF_PLUGIN_DIR); terraform init/validate were not run"
    return 0
  fi

  # A copy keeps relative module sources (../../modules/...) working.
  mkdir -p "$WORK/infra"
  (cd "$INFRA" && tar --exclude='.terraform' --exclude='.terraform.lock.hcl' --exclude='*.tfstate*' -cf - .) |
    (cd "$WORK/infra" && tar -xf -)

  local dir name failed=0
  for dir in "$WORK"/infra/modules/*/ "$WORK"/infra/examples/*/; do
    [[ -d "$dir" ]] || continue
    name="${dir#"$WORK"/}"
    name="${name%/}"
    log "terraform init + validate: $name"
    if ! "$TERRAFORM" -chdir="$dir" init -backend=false -plugin-dir="$PLUGIN_DIR" -input=false -no-color >"$WORK/init.log" 2>&1; then
      cat "$WORK/init.log" >&2
      log "FAILED: terraform init in $name"
      failed=1
      continue
    fi
    if ! "$TERRAFORM" -chdir="$dir" validate -no-color; then
      log "FAILED: terraform validate in $name"
      failed=1
      continue
    fi
    # The modules' own tests (tests/*.tftest.hcl): guard rails and derived
    # settings, against a mocked provider, so nothing is created anywhere.
    if compgen -G "$dir/tests/*.tftest.hcl" >/dev/null; then
      log "terraform test: $name"
      if ! "$TERRAFORM" -chdir="$dir" test -no-color; then
        log "FAILED: terraform test in $name"
        failed=1
      fi
    fi
  done
  ((failed == 0)) || die "terraform validate failed"
}

# --- 3: checkov ---------------------------------------------------------------

install_checkov() {
  # The marker is written only after pip succeeded, so an interrupted install
  # or an edited pin list both lead to a (re)install instead of a broken venv.
  if [[ -x "$VENV/bin/checkov" && -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$(printf '%s\n' "${CHECKOV_PINS[@]}")" ]]; then
    return 0
  fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set S3I_PYTHON)"
  log "installing ${CHECKOV_PINS[*]} into $VENV (a minute or two, once)"
  rm -f "$MARKER"
  if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${CHECKOV_PINS[@]}"
  printf '%s\n' "${CHECKOV_PINS[@]}" >"$MARKER"
  log "installed"
}

checkov_checks() {
  install_checkov
  log "checkov -d infra --framework terraform"
  # Offline and quiet: no Prisma Cloud/Bridgecrew calls (guideline mapping,
  # telemetry), no downloads of external modules (all modules are local).
  local status=0
  (
    cd "$ROOT"
    BC_SKIP_MAPPING=TRUE \
    CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false \
    "$VENV/bin/checkov" -d infra --framework terraform --quiet --compact \
      --skip-download --download-external-modules false --output cli
  ) || status=$?
  case "$status" in
    0) log "checkov: no failed checks" ;;
    1) die "checkov: failed checks above; fix them, or skip one inline with #checkov:skip=CKV_...:<reason> where it does not apply" ;;
    *) die "checkov did not run (exit $status)" ;;
  esac
}

terraform_checks
checkov_checks
if ((${#SKIPS[@]})); then
  log "OK, but incomplete: ${SKIPS[*]}"
else
  log "OK"
fi
