"""The benchmark and paper-table commands end to end on tiny sizes (no timing asserted)."""

import glob
import importlib
import json
import os

import jax.numpy as jnp
import pytest

import attention_zoo

from configs.bench import tiny
from configs.paper import lra_efficiency, rabe_staats
from experiments import benchmark, children
from experiments.benchmark import attention, machine, measure


def _rows(workdir):
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)["rows"]


@pytest.mark.slow
def test_attention_benchmark_writes_table_csv_json_and_plots(tmp_path):
  config = tiny.get_config().unlock()
  config.lengths, config.modes, config.torch = (16, 24), ("forward", "forward_backward"), False
  table = benchmark.run(config, str(tmp_path))
  rows = _rows(tmp_path)
  # jax + 4 variants, at 2 lengths x 2 causal settings x 2 modes
  assert len(rows) == 5 * 2 * 2 * 2
  assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
  assert table.count("\n| ") == len(rows) + 1  # header, separator and one line per row
  assert {f for f in os.listdir(tmp_path) if f.endswith(".png")} == {
      "forward_bidirectional.png", "forward_causal.png", "forward_backward_bidirectional.png",
      "forward_backward_causal.png"}
  assert os.path.getsize(tmp_path / "results.csv") > 0


@pytest.mark.slow
def test_fresh_processes_report_each_case_at_its_best_median(tmp_path):
  """`processes` = 2: the grid timed in two fresh processes; each row holds both medians
  and is the faster one's, its ratio to jax taken between best medians; the machine (the
  processor's model) and the matmul peak head the table."""
  config = tiny.get_config().unlock()
  config.variants, config.lengths, config.causal = ("linear",), (16,), (False,)
  config.modes, config.torch, config.processes = ("forward",), False, 2
  table = benchmark.run(config, str(tmp_path))
  rows = {r["variant"]: r for r in _rows(tmp_path)}
  assert set(rows) == {"jax", "linear"}
  for r in rows.values():
    assert r["processes"] == 2 and len(r["medians_ms"]) == 2
    assert r["median_ms"] == min(r["medians_ms"])
  assert rows["linear"]["speedup_vs_jax"] == pytest.approx(
      rows["jax"]["median_ms"] / rows["linear"]["median_ms"])
  assert f"Machine: {machine.processor()}, {machine.cores()} cores" in table
  assert "Matmul peak (float32, best of the run): JAX" in table
  assert "best median ms (medians over 2 processes)" in table


def test_best_of_takes_each_case_from_its_fastest_process():
  row = lambda variant, ms, peak: dict(variant=variant, length=8, causal=False, mode="forward",
                                       median_ms=ms, gflops=1.0 / ms, matmul_peak_gflops=peak)
  best = attention.best_of([[row("jax", 4.0, 10.0), row("chunked", 1.0, 10.0)],
                            [row("jax", 2.0, 20.0), row("chunked", 3.0, 20.0)]])
  assert [(r["variant"], r["median_ms"], r["medians_ms"]) for r in best] == [
      ("jax", 2.0, [4.0, 2.0]), ("chunked", 1.0, [1.0, 3.0])]
  assert best[1]["speedup_vs_jax"] == 2.0 and best[1]["peak_fraction"] == 1.0 / 20.0


def test_the_processor_is_named_with_its_family_model_and_vector_extension(tmp_path):
  """Two CPUs that a virtual machine both calls "AMD EPYC" differ 2x in matmul peak."""
  core = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
          "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 {extra}\n")
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(core.format(n=0, extra="avx512f") + "\n" + core.format(n=1, extra="avx512f"))
  assert machine.processor(str(cpuinfo)) == "AMD EPYC (family 25 model 17, AVX-512)"
  cpuinfo.write_text(core.format(n=0, extra="avx512f amx_tile"))
  assert machine.processor(str(cpuinfo)).endswith(", AMX)")
  cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
  assert machine.processor(str(cpuinfo)) == "Some CPU"


def test_the_machine_line_names_xla_flags_where_set(monkeypatch):
  """A table timed under other compiler flags says so (the suite sets some of its own)."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=true")
  assert machine.describe().endswith(", XLA_FLAGS=--xla_cpu_use_onednn=true")
  monkeypatch.setenv("XLA_FLAGS", " ")
  assert "XLA_FLAGS" not in machine.describe()


def test_every_attention_benchmark_config_names_variants_that_exist():
  """A misspelt variant or option would fail only in the benchmark's child processes."""
  configs = [importlib.import_module(f"configs.bench.{os.path.basename(p)[:-3]}").get_config()
             for p in glob.glob(os.path.join(os.path.dirname(tiny.__file__), "*.py"))]
  specs = [spec for c in configs if c.get("kind") == "attention" for spec in c.variants]
  assert "chunked:query_chunk_size=1024:key_chunk_size=512" in specs  # configs/bench/blocks.py
  for spec in specs:
    name, options = attention.parse_variant(spec)
    attention_zoo.get(name, **options)


def test_lengths_that_do_not_fit_are_reported_not_run(tmp_path):
  config = tiny.get_config().unlock()
  config.lengths, config.causal, config.modes, config.torch = (16,), (False,), ("forward",), False
  config.memory_fraction = 1e-12
  benchmark.run(config, str(tmp_path))
  rows = _rows(tmp_path)
  assert rows and all(r["status"].startswith("does not fit") and r["median_ms"] is None
                      for r in rows)


def test_a_case_out_of_memory_when_run_is_reported_as_not_fitting(monkeypatch):
  """The H200 ran out of memory on cases XLA's analysis said would fit (JAX's attention at
  T = 32768): that is "does not fit", not an unexplained failure."""
  def exhausted(compiled, args):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 64.02GiB")
  monkeypatch.setattr(measure, "_time_once", exhausted)
  found = measure.measure(lambda x: x * 2, (jnp.ones(4),), repeats=1, seconds=1.0,
                          budget_bytes=2**30)
  assert found.status == "does not fit (out of memory when run)" and found.median_ms is None


def test_the_kernel_benchmarks_need_no_data_stack():
  """The GPU check runs them on a machine with JAX and ml_collections alone."""
  child = children.run("""
      import sys
      from experiments import benchmark
      from experiments.benchmark import attention, recurrences
      from configs.bench import gated, gpu
      loaded = {"tensorflow_datasets", "grain", "orbax", "flax", "optax"} & set(sys.modules)
      assert not loaded, loaded
      """)
  assert child.returncode == 0, child.stderr


def test_rabe_staats_table(tmp_path):
  config = rabe_staats.get_config().unlock()
  config.min_log2, config.max_log2, config.max_timed_length, config.head_dim = 4, 6, 32, 8
  config.repeats = 1
  table = benchmark.run(config, str(tmp_path))
  rows = _rows(tmp_path)
  assert [r["n"] for r in rows] == [16, 32, 64]
  assert rows[0]["inference_speed"] is not None and rows[-1]["inference_speed"] is None
  assert all(r["efficient_differentiation_mib"] > 0 for r in rows)
  assert "| 2^6 |" in table


@pytest.mark.slow
def test_lra_efficiency_table(tmp_path):
  config = lra_efficiency.get_config().unlock()
  config.lengths, config.repeats, config.variants = (32, 48), 1, ("softmax", "linear")
  config.model.d_model, config.model.d_ff, config.model.num_encoder_layers = 16, 32, 1
  table = benchmark.run(config, str(tmp_path))
  rows = _rows(tmp_path)
  assert len(rows) == 2 * len(config.variants) and all(r["steps_per_second"] for r in rows)
  assert table.count("\n| ") == len(config.variants) + 1


def test_bench_needs_a_config(tmp_path):
  result = children.run(argv=["launch.py", "bench"], timeout=120)
  assert result.returncode != 0 and "bench needs --config and --workdir" in result.stderr


def test_repeats_shrink_only_for_slow_cases():
  from experiments.benchmark.measure import timed_runs
  assert timed_runs(first_ms=10.0, repeats=5, seconds=20.0) == 5
  assert timed_runs(first_ms=8000.0, repeats=5, seconds=20.0) == 2
  assert timed_runs(first_ms=60000.0, repeats=5, seconds=20.0) == 1


@pytest.mark.slow
def test_devices_benchmark_runs_the_loop_on_each_device_count(tmp_path):
  from configs.bench import devices  # pylint: disable=import-outside-toplevel
  from tests import tiny as tiny_experiment  # pylint: disable=import-outside-toplevel
  config = devices.get_config().unlock()
  # fsdp on 1 device is data parallelism; on 2 it shards parameters and optimizer state too
  config.device_counts, config.meshes = (1, 2), ("fsdp",)
  config.experiment = tiny_experiment.config("softmax", tmp_path / "tfds", num_train_steps=6,
                                             log_every=2)
  table = benchmark.run(config, str(tmp_path / "bench"))
  rows = _rows(tmp_path / "bench")
  assert [(r["devices"], r["mesh"], r["status"]) for r in rows] == [
      (1, "fsdp=1", "ok"), (2, "fsdp=2", "ok")]
  # the same global batch: the same loss on any mesh, to float32 rounding
  assert len({round(r["final_train_loss"], 4) for r in rows}) == 1
  assert all(r["step_ms"] > 0 and r["memory_per_device_mib"] > 0 for r in rows)
  assert table.count("\n| ") == 1 + len(rows)


@pytest.mark.slow
def test_flex_benchmark_prints_its_tables():
  """experiments/benchmark/flex.py at a small T: the three tables, every case measured,
  the score_mod's memory growing linearly in T and the dense bias's faster, and skipping
  computing fewer blocks than the dense mask."""
  from experiments.benchmark import flex  # pylint: disable=import-outside-toplevel
  alibi, memory, documents = flex.main(256, 64).split("\n\n")
  assert alibi.count("\n") == 5 and "ALiBi score_mod" in alibi and "failed" not in alibi
  growth = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[-1].strip(" |x"))
            for line in memory.splitlines()[2:]}
  assert growth["chunked, ALiBi score_mod"] < 10 < growth["chunked, ALiBi dense bias"], growth
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
          documents.splitlines()[2:]}
  assert int(rows["segment_ids"][3]) < int(rows["dense mask (no skipping)"][3])
