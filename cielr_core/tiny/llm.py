"""Tiny random-weight Qwen2 causal LM + a byte-level BPE tokenizer trained locally.

Written in the same on-disk format as a real Qwen2 checkpoint (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` with a ChatML chat template),
so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it like the real model. Nothing is
downloaded: the tokenizer is trained with ``tokenizers`` on a small built-in corpus.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen2 uses it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    '{"subtasks": ["remove the cup", "replace the apple with an orange"]}',
    '{"need": "none", "reason": "the labels suffice", "queries": [], "sam2": "keep"}',
    '{"need": "semantic", "reason": "no fruit is labelled", "queries": ["orange", "banana"]}',
    '{"need": "spatial", "reason": "which one is leftmost", "queries": [], "sam2": "more_masks"}',
    '{"status": "ok", "operation": "replace", "target_ids": [0, 1, 2], "prompt": "an orange"}',
    '{"status": "no_target", "reason": "nothing matches", "operation": null, "placement": null}',
    '{"relation": "on", "object_id": 3, "box": [0, 10, 20, 30]}',
    "result = {} for i in ssr objects: result[o id] = {'ratio': float(np.mean(masks[i]))}",
    "the a an of on in near left right above below largest smallest nearest farthest food fruit",
    "person cup bottle chair table dog cat car apple orange banana bowl plate vitamin color red blue",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 0.5 0.25 true false null , : [ ] { } \" \\n",
]


def make(out_dir: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=32768,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out_dir)

    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    pad = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
