"""Beam search over a next-token log-probability function (beam size 1 = greedy decoding)."""

from __future__ import annotations

from typing import Callable

import torch

# step(prefixes N×t long, rows N long: which batch row each prefix belongs to) → N×V log-probabilities.
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def beam_search(step: StepFn, *, batch_size: int, bos_id: int, eos_id: int, max_length: int,
                beam_size: int = 1, banned_ids: tuple[int, ...] = (), length_penalty: float = 1.0,
                device: torch.device | str = "cpu") -> list[list[tuple[list[int], float]]]:
    """Decode ``batch_size`` sequences; returns, per row, its beams as (token ids without bos/eos, score).

    Beams are sorted best first; the score is the sum of log-probabilities divided by length**penalty.
    """
    rows = torch.arange(batch_size, device=device).repeat_interleave(beam_size)  # N = B·K
    prefixes = torch.full((batch_size * beam_size, 1), bos_id, dtype=torch.long, device=device)
    # Only the first beam of each row is live at the start, so the K beams do not start identical.
    scores = torch.full((batch_size, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0
    scores = scores.flatten()
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(batch_size)]
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for length in range(1, max_length + 1):
        log_probs = step(prefixes, rows).float()  # N×V
        if banned_ids:
            log_probs[:, list(banned_ids)] = float("-inf")
        vocab = log_probs.shape[-1]
        candidates = (scores.unsqueeze(1) + log_probs).view(batch_size, beam_size * vocab)
        top_scores, top_index = candidates.topk(2 * beam_size, dim=1)  # room for beams that end now
        beam_origin, token = top_index // vocab, top_index % vocab
        next_prefixes, next_scores = [], []
        for b in range(batch_size):
            kept = 0
            for score, origin, tok in zip(top_scores[b].tolist(), beam_origin[b].tolist(), token[b].tolist()):
                if score == float("-inf"):
                    break
                prefix = prefixes[b * beam_size + origin]
                if tok == eos_id or length == max_length:
                    if not done[b]:
                        ids = prefix[1:].tolist() + ([] if tok == eos_id else [tok])
                        finished[b].append((ids, score / max(len(ids), 1) ** length_penalty))
                    continue
                if kept < beam_size:
                    next_prefixes.append(torch.cat([prefix, prefix.new_tensor([tok])]))
                    next_scores.append(score)
                    kept += 1
            while kept < beam_size:  # pad dead beams so shapes stay fixed
                next_prefixes.append(torch.cat([prefixes[b * beam_size], prefixes.new_tensor([eos_id])]))
                next_scores.append(float("-inf"))
                kept += 1
            if len(finished[b]) >= beam_size:
                done[b] = True
        if bool(done.all()):
            break
        prefixes = torch.stack(next_prefixes)
        scores = torch.tensor(next_scores, device=device)
    return [sorted(beams, key=lambda item: -item[1])[:beam_size] for beams in finished]
