"""Tiny random models with a locally trained tokenizer, for fast real (not mocked) tests.

Head size 64 keeps vLLM's CPU attention kernels happy; everything else is as small as possible.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "I love this wonderful sunny day and the happy people around me.",
    "This is a terrible, awful and sad story about a broken machine.",
    "Write a short answer. Keep it concise and clear.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Reinforcement learning from human feedback aligns language models.",
    "Best of N sampling picks the highest scoring completion among N samples.",
    "Please explain how a transformer attends to previous tokens in a sequence.",
    "Numbers like 1 2 3 4 5 6 7 8 9 10 and punctuation , . ! ? : ; ' \" ( )",
] * 20

# The tiny random model picks tokens nearly uniformly from its 600: stopping on every one-character
# token of the alphabet and punctuation (``sampling.stop``) ends most of its completions within a
# dozen tokens, where its EOS alone (one token in 600) almost never does.
MANY_STOPS = [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", *".,!?;:"]


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_tiny_llama(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer(out)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(out)
    return out


def build_tiny_classifier(out: Path, seed: int = 0) -> Path:
    """A 2-label sequence classifier (labels NEGATIVE/POSITIVE) sharing the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    tok = build_tokenizer(out)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    return out
