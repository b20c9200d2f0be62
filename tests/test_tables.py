"""reasonjax.tables: every table's command points at real files and writes under docs/results;
`run` with a stand-in runner (nothing real runs: a table takes minutes to hours)."""

import os
import subprocess
import sys

import pytest

from reasonjax import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(command: tuple[str, ...]) -> list[str]:
  """The config or script files an argv names: --config=<file>[:arg] and bare *.py paths."""
  out = []
  for arg in command[1:]:
    if arg.startswith("--config="):
      out.append(arg.removeprefix("--config=").split(":")[0])
    elif arg.endswith(".py") and not arg.startswith("-"):
      out.append(arg)
  return out


def _flag(command: tuple[str, ...], name: str) -> str:
  value, = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  return value


class FakeRunner:
  """Records calls; returns a CompletedProcess with `stdout` and `returncode`."""

  def __init__(self, stdout: str = "| a | b |\n", returncode: int = 0, make=()):
    self.stdout, self.returncode, self.make, self.calls = stdout, returncode, make, []

  def __call__(self, argv, **kwargs):
    self.calls.append((list(argv), kwargs))
    for path in self.make:  # Files the real command would write, relative to its cwd.
      path = os.path.join(kwargs["cwd"], path)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.write("{}")
    stdout = self.stdout if kwargs.get("stdout") == subprocess.PIPE else None
    return subprocess.CompletedProcess(argv, self.returncode, stdout=stdout)


def _never(*args, **kwargs):
  raise AssertionError("a dry run ran something")


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_command_names_files_that_exist(name):
  table = tables.TABLES[name]
  assert table.name == name and table.command[0] == "python"
  files = _files(table.command)
  assert files, table.command
  for path in files:
    assert os.path.isfile(os.path.join(REPO, path)), path


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_pages_are_under_docs_results(name):
  table = tables.TABLES[name]
  assert table.writes
  pages = list(table.writes) + [dst for _, dst in table.copies]
  for page in pages:
    assert page.startswith("docs/results/") and ".." not in page, page
  if table.capture:
    # The printed table becomes the .md; the script's --out is the JSON beside it.
    md, js = table.writes
    assert md.endswith(".md") and _flag(table.command, "out") == js == md[:-3] + ".json"
  for text in (table.shows, table.cpu_time, table.accelerator_time, table.paper):
    assert text.strip()


def test_the_project_tables_are_listed():
  assert {"hrm_mini", "search_arith", "recipes", "sampling", "train_step", "search", "grpo",
          "mc_labels", "accelerator"} <= set(tables.TABLES)
  # Peers need their own virtualenvs: `run` leaves them out unless asked.
  assert _flag(tables.TABLES["grpo"].command, "peers") == ""
  assert "GPU" in tables.TABLES["accelerator"].note
  # The search table trains its own policy instead of reading one from /tmp.
  assert not any(a.startswith("--config.init_from") for a in tables.TABLES["search_arith"].command)


def test_what_a_table_reads_is_made_where_its_maker_works():
  for table in tables.TABLES.values():
    for path, maker in table.needs:
      assert path.startswith(_flag(tables.TABLES[maker].command, "workdir") + "/"), path
    for src, _ in table.copies:
      assert src.startswith(_flag(table.command, "workdir") + "/"), src


def test_listing_mentions_every_name_and_command():
  text = tables.listing()
  for table in tables.TABLES.values():
    assert f"\n{table.name}\n" in text
    assert table.shell() in text  # On one line, as printed by --dry_run.
    for page in table.writes:
      assert page in text


def test_run_benchmark_writes_its_output_and_json_path(tmp_path, capsys):
  runner = FakeRunner(make=["docs/results/sampling.json"])
  pages = tables.run("sampling", runner=runner, root=str(tmp_path))
  (argv, kwargs), = runner.calls
  assert argv[0] == sys.executable and argv[1] == "benchmarks/sampling.py"
  assert "--out=docs/results/sampling.json" in argv
  assert kwargs["cwd"] == str(tmp_path)
  assert pages == [str(tmp_path / "docs/results/sampling.md"),
                   str(tmp_path / "docs/results/sampling.json")]
  text = (tmp_path / "docs/results/sampling.md").read_text()
  assert text == ("Written by\n\n    python benchmarks/sampling.py "
                  "--out=docs/results/sampling.json\n\n| a | b |\n")
  assert capsys.readouterr().out.startswith(tables.TABLES["sampling"].shell() + "\n")


def test_a_failed_benchmark_writes_no_page(tmp_path, capsys):
  runner = FakeRunner(stdout="half a table\n", returncode=1)
  with pytest.raises(subprocess.CalledProcessError):
    tables.run("train_step", runner=runner, root=str(tmp_path))
  assert not (tmp_path / "docs/results/train_step.md").exists()
  assert "half a table" in capsys.readouterr().out  # Shown, to see why it failed.


def test_run_program_copies_its_json(tmp_path):
  runner = FakeRunner(make=["runs/search_arith/search.json"])
  tables.run("search_arith", runner=runner, root=str(tmp_path))
  (argv, kwargs), = runner.calls
  assert argv[:3] == [sys.executable, "-m", "reasonjax.main"]
  assert kwargs == {"cwd": str(tmp_path), "check": True}  # It writes its own page.
  assert "--config.results_page=docs/results/search_arith.md" in argv
  assert (tmp_path / "docs/results/search_arith.json").read_text() == "{}"


def test_run_refuses_a_table_whose_input_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="run search_arith"):
    tables.run("mc_labels", runner=_never, root=str(tmp_path))


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError) as e:
    tables.run("nope", runner=_never)
  for name in tables.TABLES:
    assert name in str(e.value)


def test_dry_run_prints_the_command_and_runs_nothing(tmp_path, capsys):
  assert tables.run("grpo", dry_run=True, runner=_never, root=str(tmp_path)) == []
  assert capsys.readouterr().out == tables.TABLES["grpo"].shell() + "\n"
  assert not os.listdir(tmp_path)
  assert tables.main(["run", "mc_labels", "--dry_run"]) == 0  # Needs are not checked.
  assert "--policy=runs/search_arith/sft/hf" in capsys.readouterr().out


def test_main_unknown_name_exits_with_the_valid_names(capsys):
  with pytest.raises(SystemExit) as e:
    tables.main(["run", "nope", "--dry_run"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "nope" in err and all(name in err for name in tables.TABLES)


def test_module_lists_the_tables_without_importing_jax():
  out = subprocess.run([sys.executable, "-m", "reasonjax.tables"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  for name in tables.TABLES:
    assert f"\n{name}\n" in out.stdout
  # Listing must stay instant: no JAX (seconds to import) behind it.
  code = ("import sys; import reasonjax.tables as t; t.listing(); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'torch')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
