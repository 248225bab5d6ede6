#!/usr/bin/env python3
"""Offline validation of the deployment templates (run by `make test`).

No AWS account and no guarantee of a `terraform` binary here, so the templates are
checked statically:

* cfn-lint on every CloudFormation/SAM template;
* checkov on the CloudFormation templates and the Terraform module;
* python-hcl2 parses every .tf file, and the module's variables, outputs and the
  example root module's arguments agree;
* `terraform fmt -check`, when terraform exists (`validate` needs a provider download);
* `systemd-analyze verify` on the units, when systemd-analyze exists;
* the crontab line has six fields before the command and names the keyturn user.

That the policies embedded in the templates equal `keyturn policy` output is tested in
Rust (crates/keyturn-cli/tests/deploy_templates.rs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CFN = [HERE / "sam/template.yaml", HERE / "cloudformation/member-role.yaml"]
MODULE = HERE / "terraform/modules/keyturn"
EXAMPLE = HERE / "terraform/examples/organization"


def run(what: str, argv: list[str]) -> None:
    print(f"deploy check: {what}", flush=True)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        sys.exit(f"deploy check failed: {what} (exit {r.returncode})")


def hcl(path: Path) -> dict:
    import hcl2

    out: dict = {}
    for f in sorted(path.glob("*.tf")):
        with f.open() as fh:
            for k, v in hcl2.load(fh).items():
                out.setdefault(k, []).extend(v)
    return out


def names(blocks: list) -> dict:
    """name -> body of each block (python-hcl2 adds __start_line__/__end_line__)."""
    return {k: v for b in blocks for k, v in b.items() if not k.startswith("__")}


def terraform_structure() -> None:
    print("deploy check: terraform structure (python-hcl2)", flush=True)
    mod = hcl(MODULE)
    variables = names(mod.get("variable", []))
    outputs = names(mod.get("output", []))
    for n, v in {**variables, **outputs}.items():
        assert v.get("description"), f"module: {n} has no description"
    text = "".join(f.read_text() for f in MODULE.glob("*.tf"))
    for n in variables:
        assert f"var.{n}" in text, f"module: variable {n} is never used"
    required = {n for n, v in variables.items() if "default" not in v}
    ex = hcl(EXAMPLE)
    calls = names(ex.get("module", []))
    call = calls["keyturn"]
    given = {k for k in call if k != "source" and not k.startswith("__")}
    assert required <= given, f"example: missing module arguments {required - given}"
    assert given <= set(variables), f"example: unknown module arguments {given - set(variables)}"
    ex_text = "".join(f.read_text() for f in EXAMPLE.glob("*.tf"))
    for ref in ("module.keyturn.rotator_role_arn", "module.keyturn.function_arn"):
        assert ref in ex_text and ref.split(".")[-1] in outputs, ref
    assert (MODULE / "policies/lambda.json.tpl").exists()


def main() -> None:
    for t in CFN:
        run(f"cfn-lint {t.relative_to(HERE)}", [str(BIN / "cfn-lint"), str(t)])
    # --skip-download: no call to the vendor's API (offline); skips with reasons are
    # in .checkov.yaml.
    checkov = [str(BIN / "checkov"), "--quiet", "--compact", "--skip-download",
               "--config-file", str(HERE / ".checkov.yaml")]
    for t in CFN:
        run(f"checkov cloudformation {t.relative_to(HERE)}",
            [*checkov, "--framework", "cloudformation", "-f", str(t)])
    run("checkov terraform module", [*checkov, "--framework", "terraform", "-d", str(MODULE)])
    terraform_structure()
    if shutil.which("terraform"):
        # `terraform validate` needs `terraform init`, which downloads the AWS provider:
        # not offline. The formatting check is.
        run("terraform fmt -check", ["terraform", "fmt", "-check", "-recursive", str(HERE / "terraform")])
    units = [HERE / "systemd/keyturn.service", HERE / "systemd/keyturn.timer"]
    if shutil.which("systemd-analyze"):
        # `verify` wants the ExecStart binary to exist; point it at a stand-in.
        with tempfile.TemporaryDirectory() as tmp:
            for u in units:
                text = u.read_text().replace("/usr/local/bin/keyturn", "/bin/true")
                (Path(tmp) / u.name).write_text(text)
            run("systemd-analyze verify", ["systemd-analyze", "verify",
                                           *[str(Path(tmp) / u.name) for u in units]])
    else:
        print("deploy check: systemd-analyze not installed: unit files not verified")
    for line in (HERE / "cron/keyturn").read_text().splitlines():
        if line and not line.startswith("#") and "=" not in line.split()[0]:
            f = line.split()
            assert len(f) > 6 and f[5] == "keyturn" and f[6].endswith("/keyturn"), line
    print("deploy check: ok")


if __name__ == "__main__":
    os.chdir(HERE)
    main()
