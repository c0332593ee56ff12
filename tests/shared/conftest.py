import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from perennial.backbone import TextBackbone, default_model_path


@pytest.fixture
def tiny_backbone() -> TextBackbone:
    """A 2-block random BERT with MiniLM's tokenizer: fast, for mechanics (not quality)."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    return TextBackbone(BertModel(config), tokenizer, max_length=16)


@pytest.fixture(scope="session")
def minilm() -> TextBackbone:
    return TextBackbone.load()
