"""tuning.config: Kaito training_config.yaml sections resolved into what will run, without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuning import config

KAITO_QLORA_YAML = """\
training_config:
  ModelConfig:
    torch_dtype: "bfloat16"
    local_files_only: true
    device_map: "auto"
  QuantizationConfig:
    load_in_4bit: true
    bnb_4bit_quant_type: "nf4"
    bnb_4bit_compute_dtype: "bfloat16"
    bnb_4bit_use_double_quant: true
  LoraConfig:
    r: 8
    lora_alpha: 8
    lora_dropout: 0.0
    target_modules: ["qkv_proj", "o_proj"]
  TrainingArguments:
    output_dir: "/mnt/results"
    ddp_find_unused_parameters: false
    save_strategy: "epoch"
    per_device_train_batch_size: 1
    learning_rate: 2e-4
  DataCollator:
    mlm: true
  DatasetConfig:
    shuffle_dataset: true
    train_test_split: 1
"""


def test_tiny_defaults_on_cpu_use_phi3_targets_4bit_nf4_and_no_bf16():
    resolved = config.resolve(None, model="tiny-phi-3", method="qlora", hardware="cpu")
    assert resolved["LoraConfig"]["target_modules"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    quant = resolved["QuantizationConfig"]
    assert quant == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                     "bnb_4bit_compute_dtype": "float32"}
    args = resolved["TrainingArguments"]
    assert (args["bf16"], args["fp16"], args["use_cpu"]) == (False, False, True)
    assert resolved["ModelConfig"]["torch_dtype"] == "float32"
    assert resolved["adjustments"] == []
    json.dumps(resolved)  # a cache key can be built from it


@pytest.mark.parametrize(
    ("hardware", "dtype", "bf16", "fp16"),
    [("cpu", "float32", False, False), ("cuda-pre-ampere", "float16", False, True), ("cuda-ampere", "bfloat16", True, False)],
)
def test_dtype_choices_follow_the_hardware(hardware, dtype, bf16, fp16):
    resolved = config.resolve(None, model="tiny-phi-3", method="qlora", hardware=hardware)
    assert resolved["ModelConfig"]["torch_dtype"] == dtype
    assert resolved["QuantizationConfig"]["bnb_4bit_compute_dtype"] == dtype
    assert (resolved["TrainingArguments"]["bf16"], resolved["TrainingArguments"]["fp16"]) == (bf16, fp16)


def test_kaito_default_yaml_loads_and_bf16_is_downgraded_on_cpu_with_a_note(tmp_path: Path):
    path = tmp_path / "training_config.yaml"
    path.write_text(KAITO_QLORA_YAML)
    resolved = config.resolve(config.load_file(path), model="tiny-phi-3", method="qlora", hardware="cpu")
    assert resolved["LoraConfig"]["target_modules"] == ["qkv_proj", "o_proj"]  # the config wins
    assert resolved["TrainingArguments"]["learning_rate"] == 2e-4  # "2e-4" is a string in YAML
    assert resolved["DataCollator"]["mlm"] is False
    assert "ModelConfig.torch_dtype: bfloat16 -> float32 (cpu)" in resolved["adjustments"]
    on_gpu = config.resolve(config.load_file(path), model="tiny-phi-3", method="qlora", hardware="cuda-ampere")
    assert on_gpu["ModelConfig"]["torch_dtype"] == "bfloat16" and on_gpu["adjustments"] == []


def test_sections_may_sit_at_top_level_or_in_a_configmap(tmp_path: Path):
    top = tmp_path / "top.yaml"
    top.write_text("LoraConfig:\n  r: 4\n")
    configmap = tmp_path / "cm.yaml"
    configmap.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: qlora-params}\ndata:\n"
        "  training_config.yaml: |\n" + "".join("    " + line + "\n" for line in KAITO_QLORA_YAML.splitlines())
    )
    assert config.resolve(config.load_file(top), model="tiny-phi-3", method="lora", hardware="cpu")["LoraConfig"]["r"] == 4
    resolved = config.resolve(config.load_file(configmap), model="tiny-phi-3", method="qlora", hardware="cpu")
    assert resolved["LoraConfig"]["r"] == 8


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"training_config": {"LoraConfig": {"lora_alpa": 8}}}, "LoraConfig.lora_alpa: unknown key (did you mean 'lora_alpha'?)"),
        ({"training_config": {"TrainingArguments": {"learning_rat": 1e-4}}}, "TrainingArguments.learning_rat"),
        ({"training_config": {"DatasetConfig": {"message_column": "m"}}}, "DatasetConfig.message_column"),
        ({"training_config": {"LoRAConfig": {}}}, "LoRAConfig: unknown section (did you mean 'LoraConfig'?)"),
        ({"training_config": {"TrainingArguments": {"max_steps": "many"}}}, "TrainingArguments.max_steps: expected a number"),
        ({"training_config": {"QuantizationConfig": {"load_in_4bit": True, "load_in_8bit": True}}},
         "QuantizationConfig.load_in_8bit"),
        ({"training_config": {"DatasetConfig": {"train_test_split": 1.5}}}, "DatasetConfig.train_test_split"),
        ({"training_config": {"ModelConfig": {"torch_dtype": "float8"}}}, "ModelConfig.torch_dtype: unknown dtype"),
        ({"training_config": {"TrainingArguments": {"hub_token": "hf_secret"}}}, "TrainingArguments.hub_token: secrets"),
    ],
)
def test_bad_configs_name_the_section_and_key(raw, needle):
    with pytest.raises(config.ConfigError) as caught:
        config.resolve(raw, model="tiny-phi-3", method="qlora", hardware="cpu")
    assert needle in str(caught.value)
    assert "hf_secret" not in str(caught.value)


def test_methods_choose_the_quantization():
    lora = config.resolve(None, model="tiny-phi-3", method="lora", hardware="cpu")
    assert lora["QuantizationConfig"] == {}
    eight = config.resolve({"QuantizationConfig": {"load_in_8bit": True}}, model="tiny-phi-3", method="qlora",
                           hardware="cpu")
    assert eight["QuantizationConfig"] == {"load_in_8bit": True}
    with pytest.raises(config.ConfigError, match="method"):
        config.resolve(None, model="tiny-phi-3", method="full", hardware="cpu")


def test_real_presets_keep_kaito_like_defaults_and_local_phi3_folders_get_phi3_targets(tmp_path: Path):
    folder = tmp_path / "my-phi"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3", "max_position_embeddings": 4096}))
    resolved = config.resolve(None, model=str(folder), method="qlora", hardware="cuda-ampere")
    assert resolved["LoraConfig"]["target_modules"] == config.PHI3_TARGETS
    assert resolved["LoraConfig"]["r"] == 8 and resolved["TrainingArguments"]["learning_rate"] == 2e-4
    assert resolved["TrainingArguments"]["max_length"] == 2048
    by_name = config.resolve(None, model="microsoft/Phi-3-mini-4k-instruct", method="qlora", hardware="cuda-ampere")
    assert by_name["LoraConfig"]["target_modules"] == config.PHI3_TARGETS
    unknown = config.resolve(None, model="some-org/unknown-arch", method="qlora", hardware="cpu")
    assert "target_modules" not in unknown["LoraConfig"]  # peft picks by architecture when the model loads


def test_overrides_from_flags_land_in_the_resolved_config():
    raw = {"training_config": {"TrainingArguments": {"max_steps": 100}}}
    steps = config.resolve(config.apply_overrides(raw, max_steps=7), model="tiny-phi-3", method="qlora", hardware="cpu")
    assert steps["TrainingArguments"]["max_steps"] == 7
    epochs = config.resolve(config.apply_overrides(raw, epochs=2), model="tiny-phi-3", method="qlora", hardware="cpu")
    assert epochs["TrainingArguments"]["num_train_epochs"] == 2 and "max_steps" not in epochs["TrainingArguments"]


def test_resolve_is_deterministic_and_imports_no_torch():
    code = (
        "import sys, json; from tuning import config; "
        "r = config.resolve(None, model='tiny-phi-3', method='qlora', hardware='cpu'); "
        "print(json.dumps(r, sort_keys=True)); "
        "assert not any(m in sys.modules for m in ('torch', 'trl', 'peft', 'transformers')), 'heavy import'"
    )
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    assert outputs[0] == outputs[1] and json.loads(outputs[0])["method"] == "qlora"


def test_batching_groups_by_length_unless_flash_attention_allows_packing():
    plain = config.resolve(None, model="tiny-phi-3", method="qlora", hardware="cpu")["TrainingArguments"]
    assert plain["train_sampling_strategy"] == "group_by_length" and "packing" not in plain
    flash = config.resolve({"ModelConfig": {"attn_implementation": "flash_attention_2"}}, model="tiny-phi-3",
                           method="qlora", hardware="cuda-ampere")["TrainingArguments"]
    assert flash["packing"] is True and flash["packing_strategy"] == "bfd" and "train_sampling_strategy" not in flash
    asked = config.resolve({"TrainingArguments": {"packing": True}}, model="tiny-phi-3", method="qlora",
                           hardware="cpu")["TrainingArguments"]
    assert asked["packing"] is True and "train_sampling_strategy" not in asked
