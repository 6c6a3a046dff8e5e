"""The environment record (miue/env.py) is written once: ``miue info``, the demo and every
benchmark read ``miue.env.environment()``; no other Python file gathers versions itself."""

import glob
import json
import os

import torch

import miue
from miue.cli import main
from miue.env import environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_environment_record_holds_the_versions_the_machine_and_the_backends():
    env = environment()
    assert env["miue"] == miue.__version__ and env["torch"] == torch.__version__
    assert env["backends"] == miue.available_backends() and env["cores"] >= 1
    assert isinstance(env["native_bf16"], bool) and env["bf16_reason"]
    json.dumps(env)  # a JSON record


def test_miue_info_is_the_environment_record(capsys):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(environment()))


def test_no_other_file_gathers_the_environment_itself():
    files = glob.glob(os.path.join(ROOT, "miue", "**", "*.py"), recursive=True) + \
        glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
    offenders = [os.path.relpath(f, ROOT) for f in files if not f.endswith(os.path.join("miue", "env.py"))
                 and ("platform.python_version()" in open(f).read() or "from miue.demo import _machine" in open(f).read())]
    assert not offenders, f"gather the environment with miue.env.environment(): {offenders}"
