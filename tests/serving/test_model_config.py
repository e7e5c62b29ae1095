"""config.pbtxt checks: Triton's schema plus the FIL rules, each error with its line number."""

import subprocess
import sys

import pytest

from tritonflow.serving.model_config import (
    ConfigError,
    ConfigSpec,
    TensorSpec,
    build_config,
    check_config,
    fil_options,
    parse_config,
    problems,
    render,
    signature,
    to_json,
)
from tritonflow.serving.served_config import as_served
from tritonflow.serving.triton_releases import classifier_key


def fil_spec(**changes):
    params = {
        "model_type": "treelite_checkpoint",
        "is_classifier": "true",
        "predict_proba": "true",
        "threshold": "0.5",
    }
    spec = dict(
        name="fraud",
        backend="fil",
        inputs=(TensorSpec("input__0", "FP32", (30,)),),
        outputs=(TensorSpec("output__0", "FP32", (2,)),),
        parameters=params,
    )
    spec.update(changes)
    return ConfigSpec(**spec)


def lines_of(text):
    return {p.line: p.message for p in problems(text) if p.severity == "error"}


def test_generated_fil_config_is_complete_and_valid():
    text = render(build_config(fil_spec(instance_kind="gpu", max_queue_delay_us=250)))
    config = check_config(text)
    assert config.backend == "fil" and config.max_batch_size == 8192
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.version_policy.latest.num_versions == 1
    opts = fil_options(config)
    assert (opts.model_type, opts.model_file, opts.is_classifier, opts.predict_proba) == (
        "treelite_checkpoint",
        "checkpoint.tl",
        True,
        True,
    )


def test_schema_errors_carry_line_numbers():
    text = 'name: "m"\nbackend: "fil"\nmax_batch_size: "many"\n'
    with pytest.raises(ConfigError) as exc:
        check_config(text)
    assert exc.value.problems[0].line == 3 and "line 3" in str(exc.value)
    assert problems('name: "m"\nbogus_field: 1\n')[0].line == 2


def test_fil_rules():
    good = render(build_config(fil_spec()))
    assert lines_of(good) == {}
    capitalised = good.replace('string_value: "true"', 'string_value: "True"', 1)
    found = lines_of(capitalised)
    assert any("lowercase" in m for m in found.values())
    line = next(n for n, m in found.items() if "lowercase" in m)
    assert '"True"' in capitalised.splitlines()[line - 1]

    no_classifier = render(build_config(fil_spec(parameters={"model_type": "treelite_checkpoint"})))
    assert any('missing parameter "is_classifier"' in m for m in lines_of(no_classifier).values())

    removed = fil_spec(parameters={**fil_spec().parameters, "storage_type": "AUTO"})
    assert any("removed" in m for m in lines_of(render(build_config(removed))).values())

    wrong_dims = fil_spec(outputs=(TensorSpec("output__0", "FP32", (1,)),))
    assert any("n_classes >= 2" in m for m in lines_of(render(build_config(wrong_dims))).values())

    fp64 = fil_spec(inputs=(TensorSpec("input__0", "FP64", (30,)),))
    assert any("TYPE_FP32" in m for m in lines_of(render(build_config(fp64))).values())

    unbatched = fil_spec(max_batch_size=0)
    assert any("max_batch_size > 0" in m for m in lines_of(render(build_config(unbatched))).values())


def test_legacy_output_class_dialect():
    assert classifier_key("25.08") == "output_class" and classifier_key("25.09") == "is_classifier"
    legacy = fil_spec(
        parameters={"model_type": "xgboost_json", "output_class": "true", "threshold": "0.3"},
        outputs=(TensorSpec("output__0", "FP32", (1,)),),
    )
    config = check_config(render(build_config(legacy)))
    opts = fil_options(config)
    assert opts.is_classifier and not opts.predict_proba and opts.threshold == 0.3
    assert opts.model_file == "xgboost.json"


def test_to_json_matches_triton_shapes():
    data = to_json(build_config(fil_spec()))
    assert data["input"][0]["dims"] == [30] and data["max_batch_size"] == 8192
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert data["parameters"]["model_type"]["string_value"] == "treelite_checkpoint"


def test_served_config_prints_every_default_as_triton_does():
    config = build_config(fil_spec())
    data = to_json(as_served(config, "fraud"))
    assert data["platform"] == "" and data["runtime"] == "libtriton_fil.so"
    assert data["input"][0]["format"] == "FORMAT_NONE" and data["input"][0]["optional"] is False
    assert data["output"][0]["is_shape_tensor"] is False and data["batch_input"] == []
    assert data["dynamic_batching"]["preferred_batch_size"] == [8192]  # Triton's: max_batch_size
    assert data["dynamic_batching"]["priority_queue_policy"] == {}
    assert data["optimization"]["input_pinned_memory"] == {"enable": True}
    assert data["optimization"]["gather_kernel_buffer_threshold"] == 0
    assert data["instance_group"] == [
        {
            "name": "fraud_0",
            "kind": "KIND_CPU",
            "count": 1,
            "gpus": [],
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
    ]
    assert "sequence_batching" not in data and "response_cache" not in data  # unset: Triton omits them
    assert not config.HasField("optimization")  # the served config is a copy


def test_served_config_completes_a_trimmed_onnx_config_as_triton():
    onnx = parse_config('platform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    served = to_json(as_served(onnx, "iris"))
    assert (served["name"], served["backend"], served["platform"]) == (
        "iris",
        "onnxruntime",
        "onnxruntime_onnx",
    )
    assert served["version_policy"] == {"latest": {"num_versions": 1}}
    assert [(g["name"], g["kind"], g["count"]) for g in served["instance_group"]] == [("iris", "KIND_CPU", 2)]
    text = 'backend: "onnxruntime"\ninstance_group [{kind: KIND_AUTO}, {count: 3}]\nsequence_batching {}\n'
    served = to_json(as_served(parse_config(text), "iris"))
    assert served["platform"] == "onnxruntime_onnx" and served["runtime"] == "libtriton_onnxruntime.so"
    assert [(g["name"], g["count"]) for g in served["instance_group"]] == [("iris_0", 2), ("iris_1", 3)]
    assert served["sequence_batching"]["max_sequence_idle_microseconds"] == 1_000_000


def test_signature_ignores_batching_settings():
    a = build_config(fil_spec(max_queue_delay_us=10))
    b = build_config(fil_spec(max_queue_delay_us=500, instance_kind="gpu"))
    c = build_config(fil_spec(inputs=(TensorSpec("input__0", "FP32", (29,)),)))
    assert signature(a) == signature(b) != signature(c)


def test_check_config_command(tmp_path):
    model = tmp_path / "repo" / "fraud"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(render(build_config(fil_spec())))
    bad = tmp_path / "repo" / "broken"
    bad.mkdir()
    (bad / "config.pbtxt").write_text('backend: "fil"\nmax_batch_size: 0\n')

    def run(*paths):
        return subprocess.run(
            [sys.executable, "-m", "tritonflow", "check-config", *map(str, paths)],
            capture_output=True,
            text=True,
        )

    ok = run(model)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("config.pbtxt: ok")
    failed = run(tmp_path / "repo")
    assert failed.returncode == 1
    assert f"{bad / 'config.pbtxt'}:2: error:" in failed.stdout
    missing = run(tmp_path / "nothing-here")
    assert missing.returncode == 2 and "no config.pbtxt there" in missing.stderr
