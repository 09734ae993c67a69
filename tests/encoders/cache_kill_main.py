"""Run by test_cache.py as a process: cache a corpus's teacher embeddings, SIGKILL itself mid-way.

argv: teacher_dir corpus.json store_dir. Shards of 4 texts, encoded 2 at a time; the process kills itself
(SIGKILL, no cleanup of any kind) when the teacher is asked for the second shard, i.e. after exactly one
committed shard, while the run is in the middle of its work.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from kdistill.encoders.cache import cache_teacher_embeddings
from kdistill.encoders.models import load_encoder

torch.set_num_threads(1)
teacher_dir, corpus_file, store_dir = sys.argv[1:4]
teacher = load_encoder(teacher_dir)
encode, calls = teacher.encode, []


def encode_then_die(texts, batch_size=32):
    calls.append(len(texts))
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(texts, batch_size=batch_size)


teacher.encode = encode_then_die
cache_teacher_embeddings(
    teacher, json.loads(Path(corpus_file).read_text()), store_dir=store_dir, shard_size=4, batch_size=2
)
sys.exit(3)  # never reached: the kill comes first
