"""Fine-tuning all-MiniLM-L6-v2 for the intent head with torch (optional).

Used by :class:`llmpulse.retrain.trainer.HeadTrainer` with ``fine_tune_encoder=True``.
The encoder (BERT + mean pooling + L2 normalisation) and a temporary linear
head are trained together with cross-entropy; the tuned encoder is saved as a
sentence-transformers folder and exported to ONNX by the same code as the
stock model (:mod:`llmpulse.detectors.embedding.export`, parity-checked against
PyTorch), so the result plugs into :func:`llmpulse.retrain.model.build_classifier_graph`.
Needs the ``retrain`` extra (torch, sentence-transformers).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmpulse.detectors.embedding import export as export_mod

__all__ = ["fine_tune_encoder"]


def fine_tune_encoder(
    texts: Sequence[str],
    targets: Sequence[str],
    out_path: str | os.PathLike[str],
    *,
    labels: Sequence[str],
    epochs: int = 1,
    learning_rate: float = 2e-5,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
) -> Path:
    """Fine-tune the encoder on ``texts`` with their ``targets`` (each one of ``labels``)
    and export it to ``out_path`` (ONNX)."""
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts for {len(targets)} targets")
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "fine-tuning the encoder needs torch: pip install 'llmpulse[retrain]'"
        ) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    st = SentenceTransformer(str(export_mod.minilm_dir()), device="cpu")
    bert: Any = st[0].auto_model
    index = {lab: i for i, lab in enumerate(labels)}
    y = torch.tensor([index[lab] for lab in targets], dtype=torch.long)
    head = torch.nn.Linear(int(st.get_sentence_embedding_dimension() or 384), len(labels))
    params = list(bert.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate)
    texts = list(texts)
    rng = np.random.default_rng(seed)
    bert.train()
    for _ in range(max(1, epochs)):
        order = rng.permutation(len(texts))
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            enc = st.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = bert(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            # Unit-length embeddings give small logits: a fixed scale lets the
            # softmax become confident within one epoch.
            loss = torch.nn.functional.cross_entropy(head(emb) * 20.0, y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    bert.eval()
    out = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="llmpulse-finetune-") as tmp:
        st.save(tmp)
        # The same export (and PyTorch parity check) as the stock encoder.
        export_mod._export_to(Path(tmp), out)
    return out
