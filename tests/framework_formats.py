"""Regexes for the lines Megatron-LM, DeepSpeed, the HF Trainer, torchrun and nvidia-smi -L
print, written from the real lines in ``shared/reference/real-logs.md`` and the frameworks'
sources (Megatron-LM ``training.py``/``utils.py``, DeepSpeed 0.16.4 ``engine.py``, ``comm.py``,
``torch_checkpoint_engine.py``, transformers' ``run_clm.py`` and ``modeling_*.py``, torch's
``utils/checkpoint.py``). The REAL_* lists are real lines, verbatim, so every regex is checked
against real output before it judges ours (``test_framework_formats_match_real_lines``)."""

from __future__ import annotations

import re
import textwrap

E = r"-?\d\.\d+E[+-]\d\d"  # Megatron's {:.6E}
STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\]"
GLOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ [\w./-]+\.py:\d+\] .*$")
GPU_LIST = re.compile(r"^GPU \d+: .+ \(UUID: GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\)$")

MEGATRON = {
    "iteration": re.compile(
        rf"^({STAMP} | )iteration +(?P<it>\d+)/ +\d+ \| consumed samples: +\d+ \| elapsed time per"
        r" iteration \(ms\): [\d.]+ \| (throughput per GPU \(TFLOP/s/GPU\): [\d.]+ \| )?"
        rf"learning rate: {E} \| global batch size: +\d+ \| lm loss: {E} \| (\w+: {E} \| )*"
        r"loss scale: [\d.]+ \| (grad norm: [\d.]+ \| )?(num zeros: [\d.]+ \| )?"
        r"(params norm: [\d.]+ \| )?number of skipped iterations: +\d+ \| number of nan"
        r" iterations: +\d+ \|$"
    ),
    "validation": re.compile(
        rf"^ ?valid(ation)? loss at iteration \d+( on validation set)? \| lm loss value: {E} \|"
        rf" lm loss PPL: {E} \| ?$"
    ),
    "rule": re.compile(r"^-+$"),
    "memory": re.compile(
        r"^\[Rank (?P<rank>\d+)\] \((after \d+ iterations|(before|after) save_checkpoint for"
        r" iteration \d+)\) memory \(MB\) \| allocated: [\d.]+ \| max allocated: [\d.]+ \|"
        r" reserved: [\d.]+ \| max reserved: [\d.]+$"
    ),
    "world": re.compile(
        r"^using world size: \d+, data-parallel size: \d+, context-parallel size: \d+,"
        r" hierarchical context-parallel sizes: None, tensor-model-parallel size: \d+,"
        r" pipeline-model-parallel size: \d+$"
    ),
    "vocab": re.compile(r"^> padded vocab \(size: \d+\) with \d+ dummy tokens \(new size: \d+\)$"),
    "step": re.compile(
        r"^(> initializing torch distributed|> compiling dataset index builder|> compiling and"
        r" loading fused kernels|building GPT model|> building train, validation, and test"
        r" datasets|done with setup|training) \.\.\.$"
    ),
    "parallel": re.compile(r"^> initialized (tensor|pipeline) model parallel with size \d+$"),
    "seeds": re.compile(r"^> setting random seeds to \d+ \.\.\.$"),
    "index": re.compile(
        r"^>>> done with dataset index builder\. Compilation time: [\d.]+ seconds$"
    ),
    "init_time": re.compile(r"^time to initialize megatron \(seconds\): [\d.]+$"),
    "datetime": re.compile(r"^\[[a-z ,]+\] datetime: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d $"),
    "params": re.compile(
        r"^ > number of parameters on \(tensor, pipeline\) model parallel rank \(\d+, \d+\): \d+$"
    ),
    "targets": re.compile(r"^ > datasets target sizes \(minimum size\):$"),
    "target": re.compile(r"^    (train|validation|test): +\d+$"),
    "micro": re.compile(r"^setting number of micro-batches to constant \d+$"),
    "evaluating": re.compile(r"^Evaluating (on \d+ samples|iter \d+/\d+)$"),
    "saving": re.compile(rf"^{STAMP} saving checkpoint at iteration +\d+ to \S+ in \w+ format$"),
    "saved": re.compile(
        rf"^  ({STAMP} )?successfully saved checkpoint from iteration +\d+ to \S+"
        r" \[ t \d+/\d+, p \d+/\d+ \]$"
    ),
    "loading": re.compile(r"^ loading checkpoint from \S+ at iteration \d+$"),
    "loaded": re.compile(
        r"^  successfully loaded checkpoint from \S+ \[ t \d+/\d+, p \d+/\d+ \] at iteration \d+$"
    ),
}
REAL_MEGATRON = [
    "[2026-01-16 07:32:24] iteration        5/     100 | consumed samples:        10240 | elapsed time per iteration (ms): 15800.0 | throughput per GPU (TFLOP/s/GPU): 490.0 | learning rate: 4.134000E-07 | global batch size:  2048 | lm loss: 1.344240E+01 | seq_load_balancing_loss: 1.000203E+00 | loss scale: 1.0 | grad norm: 2.870 | num zeros: 1174412544.0 | params norm: 8660.607 | number of skipped iterations:   0 | number of nan iterations:   0 |",  # noqa: E501
    "valid loss at iteration 45000 | lm loss value: 2.327091E+00 | lm loss PPL: 1.024808E+01 |",
    "-------------------------------------------------------------------------------------------",
    "[Rank 0] (after 10 iterations) memory (MB) | allocated: 4866.666015625 | max allocated: 14024.81396484375 | reserved: 17240.0 | max reserved: 17240.0",  # noqa: E501
    "> initializing torch distributed ...",
    "> initialized tensor model parallel with size 8",
    "> initialized pipeline model parallel with size 1",
    "> setting random seeds to 1234 ...",
    ">>> done with dataset index builder. Compilation time: 5.171 seconds",
    "[after megatron is initialized] datetime: 2024-04-09 09:51:29 ",
    " > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 1678213120",
    "setting number of micro-batches to constant 16",
    "> padded vocab (size: 50257) with 47 dummy tokens (new size: 50304)",
    "  successfully saved checkpoint from iteration    4771 to .../checkpoints [ t 1/1, p 1/1 ]",
]

DS_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[(?P<level>INFO|WARNING)\]"
    r" \[(?P<where>[\w.]+\.py:\d+:\w+)\] (?P<msg>.*)$"
)
DEEPSPEED_MESSAGES = {  # the messages of the logger lines every rank prints
    "accelerator": re.compile(r"^Setting ds_accelerator to cuda \(auto detect\)$"),
    "cdb": re.compile(r"^cdb=None$"),
    "ckpt": re.compile(
        r"^\[Torch\] (Saving|Saved|Loading checkpoint from|Loaded checkpoint"
        r" from) \S+/(bf16_)?(zero_pp_rank_\d+_)?mp_rank_\d\d_\w+_states\.pt(\.|\.\.\.)$"
    ),
    "commit": re.compile(r"^\[Torch\] Checkpoint global_step\d+ is ready now!$"),
    "zero_saved": re.compile(r"^(bf16_)?zero checkpoint saved \S+_optim_states\.pt$"),
    "zero_read": re.compile(r"^successfully read \d+ ZeRO state_dicts for rank (?P<rank>\d+)$"),
    "zero_load": re.compile(r"^loading \d+ zero partition checkpoints for rank (?P<rank>\d+)$"),
}
DS_CONTINUATION = re.compile(r'^( +"\w+": .+|\s*[{}],?)$')  # a multi-line value of the dump
DS_SCRIPT = re.compile(  # the training script's own print on rank 0
    r"^epoch \d+ \| (step \d+/\d+ \| loss [\d.]+ \| ppl [\d.]+ \| grad_norm [\d.]+ \| TFLOPs"
    r" [\d.]+|eval at step \d+ \| val_loss [\d.]+ \| val_ppl [\d.]+)$"
)
REAL_DEEPSPEED = [
    "[2024-10-22 20:04:52,861] [INFO] [real_accelerator.py:219:get_accelerator] Setting ds_accelerator to cuda (auto detect)",  # noqa: E501
    "[2024-10-22 20:04:55,672] [INFO] [comm.py:652:init_distributed] cdb=None",
    "[2023-08-02 00:41:17,937] [INFO] [logging.py:96:log_dist] [Rank 0] [Torch] Checkpoint global_step10 is about to be saved!",  # noqa: E501
    "[2023-11-07 01:55:23,714] [INFO] [timer.py:260:stop] epoch=0/micro_step=40/global_step=10, RunningAvgSamplesPerSec=25.025771473496132, CurrSamplesPerSec=25.704280480541442, MemAllocated=4.32GB, MaxMemAllocated=38.49GB",  # noqa: E501
]

HF = {
    "process": re.compile(
        r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d - WARNING - __main__ - Process rank: (?P<local>\d+),"
        r" device: cuda:(?P=local), n_gpu: 1, distributed training: (True|False), 16-bits"
        r" training: (True|False)$"
    ),
    "tqdm": re.compile(
        r"^ *\d+%\|[█ ]*\| \d+/\d+ \[\d\d:\d\d(:\d\d)?<\d\d:\d\d(:\d\d)?,"
        r" +([\d.]+(it/s|s/it)|\?it/s)\]$"
    ),
    "dict": re.compile(r"^\{'\w+': .*\}$"),
    "banner": re.compile(r"^\*{5} Running (training|Evaluation) \*{5}$"),
    "field": re.compile(r"^  [\w ,&().-]+ = [\d,]+$"),
    "continuing": re.compile(
        r"^  Continuing training from (checkpoint, will skip to saved"
        r" global_step|epoch \d+|global step \d+)$"
    ),
    "saving": re.compile(r"^Saving model checkpoint to \S+$"),
    "saved": re.compile(r"^(Configuration|Model weights) saved in \S+$"),
    "sharded": re.compile(
        r"^The model is bigger than the maximum size per checkpoint \(\d+GB\) and is going to be"
        r" split in \d+ checkpoint shards\. You can find where each parameters has been saved in"
        r" the index located at \S+\.$"
    ),
}
HF_STDERR = {
    "use_cache": re.compile(
        r"^`use_cache=True` is incompatible with gradient checkpointing\. Setting"
        r" `use_cache=False`\.$"
    ),
    "reentrant": re.compile(
        r"^/\S+/torch/\S+\.py:\d+: UserWarning: torch\.utils\.checkpoint: the use_reentrant"
        r" parameter should be passed explicitly\. .+$"
    ),
    "warn_source": re.compile(r"^  return fn\(\*args, \*\*kwargs\)$"),
}
REAL_HF = [
    "{'loss': 1.3736, 'grad_norm': 3.4177560806274414, 'learning_rate': 0.0001, 'epoch': 1.0}",
    "{'train_runtime': 4.8779, 'train_samples_per_second': 32.801, 'train_steps_per_second': 2.05, 'train_loss': 0.5222671627998352, 'epoch': 0.04}",  # noqa: E501
    "100%|███████████████████████████████████████████| 10/10 [00:04<00:00,  2.10it/s]",
    "***** Running training *****",
    "  Num examples = 1,000",
    "  Total train batch size (w. parallel, distributed & accumulation) = 64",
]
REAL_HF_STDERR = [
    "`use_cache=True` is incompatible with gradient checkpointing. Setting `use_cache=False`.",
    "/usr/local/lib/python3.11/dist-packages/torch/_dynamo/eval_frame.py:745: UserWarning: torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly. In version 2.5 we will raise an exception if use_reentrant is not passed. use_reentrant=False is recommended, but if you need to preserve the current default behavior, you can pass use_reentrant=True. Refer to docs for more details on the differences between the two variants.",  # noqa: E501
    "  return fn(*args, **kwargs)",
]
REAL_GLOG = ["W0304 15:04:47.404000 507927 torch/distributed/run.py:803] ",
             "W0703 17:54:21.884000 925 torch/distributed/elastic/multiprocessing/api.py:1014] Sending process 1721 closing signal SIGTERM"]  # fmt: skip  # noqa: E501


def framework_kind(style: str, line: str) -> str | None:
    """The kind of a framework line of ``style`` (a stdout line), or None."""
    if style == "megatron":
        return next((k for k, p in MEGATRON.items() if p.match(line)), None)
    if style == "deepspeed":
        found = DS_LINE.match(line)
        if found:
            msg = found["msg"]
            return next((k for k, p in DEEPSPEED_MESSAGES.items() if p.match(msg)), "logger")
        if DS_SCRIPT.match(line):
            return "script"
        if HF["saved"].match(line) or HF["sharded"].match(line):
            return "export"  # the script's save_pretrained
        return "continuation" if DS_CONTINUATION.match(line) else None
    for kind, pattern in HF.items():
        if pattern.match(line):
            return kind
    return None


SMI = {  # nvidia-smi's default table, 550/570-era drivers (observability.md section 5)
    "date": re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} {7}$"),
    "rule": re.compile(r"^\+-{89}\+$|^[|+]-{41}\+-{24}\+-{22}[|+]$"),
    "version": re.compile(
        r"^\| NVIDIA-SMI [\d.]+ +Driver Version: [\d.]+ +CUDA Version: [\d.]+ +\|$"
    ),
    "head": re.compile(
        r"^\| (GPU  Name +Persistence-M|Fan  Temp   Perf +Pwr:Usage/Cap) \| .+ \|$"
        r"|^\| {41}\| {24}\| +MIG M\. \|$"
    ),
    "double": re.compile(r"^\|=+(\+=+\+=+)?\|$"),
    "gpu": re.compile(
        r"^\| +(?P<gpu>\d+)  .{29} *(On|Off) +\| +[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.\d (On|Off)"
        r" \| +(\d+|N/A) \|$"
    ),
    "usage": re.compile(
        r"^\| (N/A|\d+%) +\d+C +P\d +\d+W / +\d+W \| +\d+MiB / +\d+MiB \| +\d+% +Default \|$"
    ),
    "mig": re.compile(r"^\| {41}\| {24}\| +(Disabled|Enabled|N/A) \|$"),
    "blank": re.compile(r"^ {89,91}$"),
    "processes": re.compile(r"^\|( Processes:|  GPU   GI   CI|        ID   ID) .*\|$"),
    "process": re.compile(r"^\| +\d+ +N/A +N/A +\d+ +(C|G|C\+G) +\S+ +\d+MiB \|$"),
    "none": re.compile(r"^\|  No running processes found +\|$"),
}


def real_smi_lines(text: str) -> list[str]:
    """The verbatim table lines of ``observability.md`` section 5."""
    table = text.split("## 5. nvidia-smi default table")[1]
    blocks = [textwrap.dedent(block) for block in table.split("```")[1::2]]
    return [line for block in blocks for line in block.splitlines()[1:] if line.strip()]
