"""Every reproducible table of the project: what it shows, its command, its pages, its cost.

    python -m reasonjax.tables                        # list them
    python -m reasonjax.tables run hrm_mini           # run one; its pages go to docs/results/
    python -m reasonjax.tables run grpo --dry_run     # print its command, run nothing

Programs and benchmarks/recipes.py write their own pages. The other benchmarks print a table
and write JSON: `run` passes `--out=docs/results/<name>.json` and writes what they print to
`docs/results/<name>.md`, headed by the command. Commands run from the repository root with
this Python. Times are those measured on the 2-core CPU machine the pages were written on;
"not measured" where nobody timed it. A paper's numbers appear only where a source in this
repository or the paper itself states them; "not stated here" otherwise.

This module imports no JAX: listing the tables must stay instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "docs/results"


@dataclasses.dataclass(frozen=True)
class Table:
  """One reproducible table. Paths are relative to the repository root."""
  name: str
  shows: str
  command: tuple[str, ...]  # argv, "python" first
  writes: tuple[str, ...]  # pages under docs/results/
  cpu_time: str  # on the 2-core CPU machine
  accelerator_time: str
  paper: str  # published numbers for the same table, with the source, or why there are none
  note: str = ""
  # True: the script prints its table; `run` writes that to writes[0], headed by the command.
  capture: bool = False
  copies: tuple[tuple[str, str], ...] = ()  # (from, to) after the command: a workdir's JSON
  needs: tuple[tuple[str, str], ...] = ()  # (path, the table whose run makes it)

  def shell(self) -> str:
    """The command as one copy-pasteable line."""
    return shlex.join(self.command)


def _benchmark(name: str, *, shows: str, cpu_time: str, accelerator_time: str = "not measured",
               paper: str, flags: tuple[str, ...] = (), note: str = "",
               needs: tuple[tuple[str, str], ...] = ()) -> Table:
  """A benchmarks/<name>.py table: it prints the table and writes JSON to --out."""
  md, js = f"{RESULTS}/{name}.md", f"{RESULTS}/{name}.json"
  return Table(name=name, shows=shows,
               command=("python", f"benchmarks/{name}.py", *flags, f"--out={js}"),
               writes=(md, js), cpu_time=cpu_time, accelerator_time=accelerator_time,
               paper=paper, note=note, capture=True, needs=needs)


# The search page's policy: configs/hrm_arith.py's policy_sft settings, which are also those of
# the policy the page in the repository was searched from (/tmp/sft_long, the README's
# Monte-Carlo benchmark policy): sft_arith:runlocal, 800 steps, 6000 problems of 2-4 operations.
_SEARCH_FLAGS = (
    "--config.sft.steps=800", "--config.sft.task.knobs.min_steps=2",
    "--config.sft.task.knobs.max_steps=4", "--config.sft.task.num_train=6000",
    "--config.task.knobs.min_steps=2", "--config.task.knobs.max_steps=4",
    "--config.search.num_problems=64", "--config.search.n_values=(1,2,4,8,16,32,64)",
    "--config.search.max_steps=6", "--config.search.max_new_tokens=64",
    "--config.search.batch_size=32", "--config.search.beam_width=4")

_TABLES = (
    Table(
        name="hrm_mini",
        shows="The HRM paper's pipeline at toy scale on arithmetic chains: ORM, PRM, HRM and "
              "HRM+HNC trained on full step trees; best-of-N and step-level greedy accuracy "
              "for N up to 64 over 3 seeds, beside majority vote and the oracle; how each "
              "scorer ranks held-out solutions (AUC); first-wrong-step detection; GRPO on each "
              "reward model (reward hacking); KL-regularised self-training; and which of the "
              "paper's claims hold at this scale.",
        command=("python", "-m", "reasonjax.main", "--config=configs/hrm_arith.py",
                 "--workdir=runs/hrm_mini", f"--config.results_page={RESULTS}/hrm_mini.md"),
        writes=(f"{RESULTS}/hrm_mini.md", f"{RESULTS}/hrm_mini.json",
                f"{RESULTS}/hrm_mini.png"),
        cpu_time="16.0 minutes (the page's header: policy 58 s, trees, HNC and records 210 s, "
                 "reward models 356 s, search evaluation 140 s, first error 5 s, reward "
                 "hacking 45 s, self-training 145 s)",
        accelerator_time="not measured",
        paper="Wang et al. 2025, \"Towards Hierarchical Multi-Step Reward Models for Enhanced "
              "Reasoning in Large Language Models\" (arXiv 2503.13551), abstract: on PRM800K, "
              "HRM with HNC evaluates more stably and reliably than PRM, and generalises to "
              "MATH500 and GSM8K. Its accuracies are for LLM policies on those datasets, not "
              "this task: not stated here. The page's last table tests each claim at this "
              "scale; most do not hold here (README, HRM reproduction).",
        note="Each stage is stored in the workdir and skipped when present: an interrupted run "
             "resumes, a rerun with other settings is refused (use a fresh --workdir)."),
    Table(
        name="search_arith",
        shows="Inference-time search from one SFT policy on 64 held-out arithmetic problems of "
              "2-4 operations: best-of-N, majority and weighted vote, step-level greedy and "
              "beam search, and MCTS, for N = 1 to 64, steps scored by the task's checker (an "
              "oracle); accuracy with generated tokens and seconds per method and N.",
        command=("python", "-m", "reasonjax.main", "--config=configs/search_arith.py:runlocal",
                 "--workdir=runs/search_arith", *_SEARCH_FLAGS,
                 f"--config.results_page={RESULTS}/search_arith.md"),
        writes=(f"{RESULTS}/search_arith.md", f"{RESULTS}/search_arith.json"),
        copies=(("runs/search_arith/search.json", f"{RESULTS}/search_arith.json"),),
        cpu_time="not timed end to end: the page's search cells sum to 332 s (5.5 minutes), "
                 "and the nested SFT policy is trained first (800 steps; the same SFT settings "
                 "are the HRM page's policy stage, 58 s there)",
        accelerator_time="not measured",
        paper="not stated here: no paper reports this table (the methods come from several "
              "papers, none on this task).",
        note="The page in the repository was searched from a policy trained separately "
             "(--config.init_from=/tmp/sft_long/hf); this command trains one with the same "
             "settings as the search's nested SFT run, in runs/search_arith/sft, so expect "
             "numbers close to the page's, not equal."),
    Table(
        name="recipes",
        shows="Every training recipe of the README's Recipes table (ReST-EM, STaR, B-STaR, "
              "DPO, Step-DPO, self-correction DPO, DAPO, Guide-GRPO, TTRL, EMPO, ...) against "
              "SFT on more data and plain GRPO, from one SFT start per task (arithmetic "
              "chains, Countdown), at the same 24 optimizer steps, 3 seeds: held-out accuracy "
              "and generated tokens; then the test-time methods and SPIRAL's self-play.",
        command=("python", "benchmarks/recipes.py", "--workdir=runs/recipes",
                 f"--out={RESULTS}/recipes.md"),
        writes=(f"{RESULTS}/recipes.md", f"{RESULTS}/recipes.json"),
        cpu_time="about 50 minutes per task (measured: the two tasks as parallel processes, one "
                 "core each), plus about 8 minutes of ThinkLite runs",
        accelerator_time="not measured",
        paper="not stated here: each recipe's paper (named in the README's Recipes table) "
              "reports on its own models and benchmarks, none on these tasks at this scale.",
        note="Every run is a stage of --workdir (a rerun skips the finished ones); --methods, "
             "--tasks, --seeds and --steps pick a part."),
    _benchmark(
        "sampling",
        shows="Generated tokens/s of the compiled sampler against transformers' generate "
              "(torch, 2 threads) on the same random Qwen2 weights and batch, tiny and ~100M "
              "shapes, greedy and sampled, float32; compile time and the weight-read bound.",
        cpu_time="not timed end to end; at the README's rates its timed and warm-up runs take "
                 "about 2.5 minutes",
        paper="none: the peer (transformers) is measured in the same run."),
    _benchmark(
        "train_step",
        shows="One SFT step (cross-entropy, clipping, AdamW) of reasonjax's compiled step "
              "against the same step in PyTorch, tiny (16 x 256) and ~100M (8 x 256), "
              "float32, taken in turns: seconds, speedup with quartiles, MFU against the "
              "measured matmul peak.",
        cpu_time="not timed end to end; the steps and compilations recorded in "
                 "benchmarks/results/train_step.json sum to about 3.7 minutes",
        paper="none: PyTorch is measured in the same run."),
    _benchmark(
        "search",
        shows="Expanding search nodes with one shared copy of the prefix's KV cache against a "
              "copy per row (tiny and ~100M, three shapes: tokens/s, ms per decode step, "
              "compiled memory), and batched step-level MCTS against a host-Python loop "
              "(simulations/s).",
        cpu_time="not timed end to end; the timed runs and compilations recorded in "
                 "benchmarks/results/search.json sum to about 4.7 minutes (warm-ups not "
                 "counted)",
        paper="none: both sides are measured in the same run."),
    _benchmark(
        "grpo",
        shows="Seconds per GRPO iteration (4 prompts x 4 completions of 64 tokens, host "
              "scoring, one AdamW step) of reasonjax against TRL's GRPOTrainer and Tunix's "
              "GRPOLearner, taken in turns, from the same random tiny weights.",
        flags=("--peers=",),
        cpu_time="not timed end to end; the iterations and start-ups recorded in "
                 "benchmarks/results/grpo.json: 45 s for reasonjax alone, about 2.3 minutes "
                 "with both peers and the pauses between turns",
        paper="none: the peers are measured in the same run.",
        note="The peers run from their own virtualenvs: `bash benchmarks/peers/setup.sh` once, "
             "then --peers=trl,tunix for the README's table. This command (--peers=, none) "
             "gives reasonjax's row alone."),
    _benchmark(
        "mc_labels",
        shows="Monte-Carlo step labels on arithmetic chains: how well the first step of MC "
              "value 0 finds the first wrong step (precision, recall, exact first error), by "
              "the full sweep (Math-Shepherd) and by binary search (OmegaPRM), with the "
              "rollouts each spends.",
        flags=("--policy=runs/search_arith/sft/hf", "--max_steps=4"),
        needs=(("runs/search_arith/sft/hf/config.json", "search_arith"),),
        cpu_time="not timed end to end; its two timed label passes took 4.7 s (sweep) and "
                 "2.5 s (binary search), after sampling and a compiling warm-up of each",
        paper="not stated here: Math-Shepherd's and OmegaPRM's papers report on their own "
              "models and datasets.",
        note="Reads the search table's SFT policy (the README's table used the same settings, "
             "trained separately): run search_arith first. Without --policy the script trains "
             "its own 600-step policy on 1-2-operation problems instead."),
    _benchmark(
        "lora",
        shows="One SFT step of LoRA (ranks 8 and 64 on every projection) against full "
              "training on the same model and batch, tiny (16 x 256) and ~100M (8 x 256), "
              "float32: trained parameters, state bytes, XLA's compiled bytes beside the "
              "memory planner's estimate, and step time as a ratio to full training.",
        cpu_time="about 6 minutes (5 min 50 s timed end to end)",
        paper="none: LoRA's paper reports GPU memory for GPT-3 175B, not these shapes."),
    _benchmark(
        "accelerator",
        shows="On a GPU or TPU: train-step MFU, decode against the memory-bandwidth bound, and "
              "one GRPO iteration, for qwen2.5-0.5b and -1.5b shapes with random bfloat16 "
              "weights (goals: MFU >= 0.40, decode >= 0.50 of the bound).",
        flags=(f"--md={RESULTS}/accelerator.md",),
        cpu_time="not measured, and not meaningful: on CPU it runs the tiny preset",
        accelerator_time="not measured: no GPU or TPU has been lent to these sessions",
        paper="none: the bounds are the devices' data-sheet peaks and bandwidths.",
        note="Needs a GPU or TPU to mean anything. Its own --md copy of the table is replaced "
             "by the printed output, headed by the command."),
)
TABLES: dict[str, Table] = {t.name: t for t in _TABLES}


def get(name: str) -> Table:
  """The table called `name`; ValueError with the valid names otherwise."""
  if name not in TABLES:
    raise ValueError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
  return TABLES[name]


def listing() -> str:
  """Every table as readable text; commands stay on one line, to copy."""
  width, label = 100, 16
  lines = ["Reproducible tables: python -m reasonjax.tables run NAME (--dry_run prints the "
           "command).", "Times: on the 2-core CPU machine the pages were written on.", ""]

  def field(key: str, text: str, wrap: bool = True) -> None:
    head = f"  {key:<{label - 2}}"
    if not wrap:
      lines.append(head + text)
      return
    lines.extend(textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * label,
                               break_on_hyphens=False))

  for t in TABLES.values():
    lines.append(t.name)
    field("shows", t.shows)
    field("command", t.shell(), wrap=False)
    field("writes", ", ".join(t.writes))
    field("CPU, 2 cores", t.cpu_time)
    field("accelerator", t.accelerator_time)
    field("paper", t.paper)
    if t.note:
      field("note", t.note)
    lines.append("")
  return "\n".join(lines).rstrip() + "\n"


def run(name: str, *, dry_run: bool = False, runner: Callable[..., subprocess.CompletedProcess]
        = subprocess.run, root: str = REPO) -> list[str]:
  """Runs table `name` from `root` and returns the paths of its pages.

  Args:
    name: a key of TABLES.
    dry_run: print the command and run nothing.
    runner: `subprocess.run` or a stand-in with its signature (tests).
    root: the repository root: the command's working directory and the pages' base.

  Returns:
    The pages' paths under `root` ([] for a dry run).

  Raises:
    ValueError: an unknown name.
    FileNotFoundError: what the table reads from another table's run is missing.
    subprocess.CalledProcessError: the command failed (no page is written by this function).
  """
  table = get(name)
  print(table.shell(), flush=True)
  if dry_run:
    return []
  for path, maker in table.needs:
    if not os.path.exists(os.path.join(root, path)):
      raise FileNotFoundError(f"{name} reads {path}, which is missing: run "
                              f"`python -m reasonjax.tables run {maker}` first")
  for page in table.writes:
    os.makedirs(os.path.dirname(os.path.join(root, page)), exist_ok=True)
  argv = [sys.executable, *table.command[1:]]
  if table.capture:
    print(f"(its output goes to {table.writes[0]} when it ends)", flush=True)
    result = runner(argv, cwd=root, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode:
      sys.stdout.write(result.stdout or "")  # What it printed before failing, to see why.
      raise subprocess.CalledProcessError(result.returncode, argv, output=result.stdout)
    with open(os.path.join(root, table.writes[0]), "w", encoding="utf-8") as f:
      f.write(f"Written by\n\n    {table.shell()}\n\n{result.stdout}")
  else:
    runner(argv, cwd=root, check=True)
  for src, dst in table.copies:
    shutil.copyfile(os.path.join(root, src), os.path.join(root, dst))
  pages = [os.path.join(root, p) for p in table.writes]
  print("wrote " + ", ".join(table.writes), flush=True)
  return pages


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m reasonjax.tables",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("action", nargs="?", default="list", choices=("list", "run"))
  parser.add_argument("name", nargs="?", help=f"the table to run: {', '.join(TABLES)}")
  parser.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
  args = parser.parse_args(argv)
  if args.action == "list":
    if args.name:
      parser.error("list takes no name; `run NAME` runs one")
    sys.stdout.write(listing())
    return 0
  if not args.name:
    parser.error(f"run needs a table name; valid: {', '.join(TABLES)}")
  try:
    run(args.name, dry_run=args.dry_run)
  except ValueError as e:
    parser.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
