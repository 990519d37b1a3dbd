"""The farm's timing and size knobs, one place, each with why it has its value. Settings a user
changes per farm (broker, store, memory profile ...) are farm/config.py's; these are the values
the code was tuned with. Pure constants: the coordinator and the workers both import it.
"""

from __future__ import annotations

# --- workers' liveness --------------------------------------------------------------------------

# How often a worker writes its heartbeat (and, when idle, pokes itself to re-read the queues):
# `farm workers` is at most this stale, and an idle worker sees new routes within it.
HEARTBEAT_SECONDS = 5
# A worker stays listed this long after its last heartbeat: six missed beats, so a busy Redis or a
# long GC pause never drops a live worker, while a switched-off PC disappears within half a minute.
HEARTBEAT_TTL = 30
# How often each worker runs the reaper (farm/messages.py requeue_orphans): three heartbeats, so a
# dead worker's held tasks go back soon after its heartbeat expires, at one Redis scan per 15 s.
REAP_SECONDS = 15
# One reaper re-queues a given orphan; another may try again after this (the first one died
# mid-way). Four reaper rounds: long enough never to double a re-queue that is merely slow.
REAP_CLAIM_TTL = 60
# A worker that dies while building a job's contact sheets frees the claim after this, so another
# can build them; sheets of a big job take minutes on a slow store.
SHEETS_CLAIM_TTL = 900

# --- queues ----------------------------------------------------------------------------------------

# A route (queue) with no task queued on it for this long is forgotten, so workers stop listening
# to the queues of old jobs; an hour keeps the routes of a job that is still being resumed.
ROUTE_IDLE_SECONDS = 3600
# Messages per pipelined publish (kombu's Producer.batch): large enough that a 100k-task job is
# queued in seconds, small enough that one round trip stays well under Redis' client timeout.
PUBLISH_BATCH = 1000
# Celery's visibility timeout: a delivered task that is not acked within this many seconds is
# handed to another worker. It must exceed the longest render + checkpoint load + clock skew
# between PCs, or a slow render is duplicated (harmless here, but wasted GPU time); the cost of a
# long one is the wait before a task of a switched-off PC is rendered elsewhere.
DEFAULT_VISIBILITY_TIMEOUT = 600.0
# How often every worker looks for unacked tasks of dead workers to hand back (kombu >= 5.7's
# default is about 100 s): a switched-off PC's task is back on the queue soon after the timeout.
DEFAULT_RESTORE_INTERVAL = 10.0

# --- grouping tasks into messages (farm/batching.py) ---------------------------------------------

# Tasks per queue message at most: a group shares diffusion calls of up to the worker's max batch,
# and 8 fills the largest automatic batch (MAX_AUTO_BATCH) once.
MAX_GROUP = 8
# A job is cut into at least this many messages per live worker, so that every worker gets work
# and the last messages still spread the job's end over the farm.
MESSAGES_PER_WORKER = 4
# Live workers assumed for a job queued before any worker is up: a small farm of a few gaming PCs;
# assuming one would put the whole job in a few big messages that only one PC could take.
WORKERS_WHEN_NONE_LIVE = 4

# --- the render task ---------------------------------------------------------------------------

# Celery retries of a task that failed with an unexpected error (CUDA out of memory at batch 1, a
# driver hiccup): three tries ride out a transient fault without hiding a real bug for long. A store
# that fails retries on its own in worker/writer.py.
RETRIES = 3
# Seconds before such a retry: far below the visibility timeout, so a retry is never duplicated.
RETRY_DELAY = 10
# Finished batches that may wait for the writer thread (worker/writer.py) while the next renders:
# two keep the GPU busy through one slow write, and bound the images held in RAM.
WRITER_MAX_PENDING = 2
# Seconds before each new try of a failed store write: a network blip passes in seconds, a store
# that is down for a minute is reported as a failed task instead of holding the worker. With
# botocore's own 8 tries of each (4-10 s against a refused connection) a write waits 56-82 s in
# all, so an S3 endpoint or NAS away for 30 s is ridden out (benchmarks/faults.py s3-outage). A
# permanent error (disk full, access denied: farm/store/failures.py) is never retried.
WRITE_RETRY_DELAYS = (2.0, 10.0, 30.0)

# --- memory and batch size (worker/memory.py, farm/families.py) -----------------------------------

# `--vram auto`: at least this many GB of VRAM -> mode. SDXL in fp16 needs about 10 GB whole, so 12 GB
# cards keep everything on the GPU; 6-12 GB cards offload whole models, smaller ones block by block.
AUTO_VRAM_GB = ((12.0, "high"), (6.0, "med"), (0.0, "low"))
# med/low profiles tile the VAE decode above this many pixels: below it the decode fits, and tiling
# changes the image slightly (a `high` worker never tiles).
TILE_ABOVE_PIXELS = 1024 * 1024
# Pixels per GB of VRAM left after a family's weights, for the pixel budget of routing and batching:
# measured activations plus the VAE decode of SD1.5/SDXL in fp16, with a margin.
PIXELS_PER_FREE_GB = 0.5 * 1024 * 1024
# `--vram low` (block-level group offload, one block per group): the share of a denoiser on the card
# at once, for routing (farm/vram.py). Flux.1's largest block (a double-stream block, ~0.34 of its
# 11.9 B parameters) is ~3 %, plus the layers outside the blocks; 10 % leaves room for both.
LOW_RESIDENT_FRACTION = 0.10
# Most images per diffusion call when the worker picks the batch: beyond 8 a batch buys little speed
# and delays every image in it.
MAX_AUTO_BATCH = 8
# A CPU worker's batch budget in pixels: its RAM holds this easily, and more buys no speed on a CPU.
CPU_BATCH_PIXELS = 2 * 1024 * 1024
# Upscaler models (worker/upscalers.py) run on tiles of at most this many pixels a side, by memory
# mode: an ESRGAN (23 RRDB blocks) tile of 512 x 512 at 4x needs about 5 GB in fp16, 256 about a
# quarter; a tile that still runs out of memory is halved. A1111's default is 192.
UPSCALE_TILE = {"high": 512, "med": 384, "low": 256}
# Neighbouring tiles overlap by this many input pixels; a tile's outer quarter of the overlap is
# not used (its pixels saw zero padding) and the rest is cross-faded, so no seam shows.
UPSCALE_TILE_OVERLAP = 32
# Upscaler models kept loaded per worker process (a few MB to a few hundred MB each).
UPSCALERS_CACHED = 2

# --- what a worker accepts from its queues (farm/guard.py) -----------------------------------------

# The largest queue message a worker decodes. A message of 8 tasks is about 10 KB; 1 MB leaves room
# for long prompts (MAX_PROMPT_CHARS each) and refuses the 50 MB message that held a worker for
# minutes at gigabytes of memory. Setting: max_message_bytes / FARM_MAX_MESSAGE_BYTES.
MAX_MESSAGE_BYTES = 1_000_000
# Dead letters kept in Redis (newest first), and how much of each message is kept: enough to see
# what it was, never the 50 MB.
DEAD_LETTERS_KEPT = 1000
DEAD_LETTER_HEAD = 2000

# --- the model depot and the workers' model cache (farm/depot.py, worker/model_cache.py) -----------

# A worker's model cache when --cache-size is not given: a few SDXL checkpoints (6.5 GB) and Flux
# files (12-24 GB) with room for LoRAs; most gaming PCs' data disk has this to spare.
DEFAULT_CACHE_BYTES = 200 * 10**9
# The download speed a worker assumes before it has measured one (MB/s): a gigabit LAN to a NAS or
# MinIO gives 100+, a home internet link to a cloud bucket 10-50; the lower middle avoids promising
# holders' work to a fetch that is slower than hoped.
ASSUMED_FETCH_MBPS = 50.0
# A render's seconds on a holder, for the routing estimate when this worker has rendered nothing yet
# (a 20-step SD1.5 image on a mid-range card; SDXL is slower, which only favours fetching later).
ASSUMED_RENDER_SECONDS = 5.0
# Tries of a depot that does not answer, and the waits between them: a NAS waking or a router
# restarting passes in seconds; then the task goes back to the queue for another worker.
DEPOT_RETRY_DELAYS = (1.0, 2.0, 4.0)
# After that, this worker offers no fetching for this long (steering leaves such queues to holders).
DEPOT_DOWN_SECONDS = 60.0
# A task whose model the depot (or its URL) cannot deliver goes back to its queue, not counted as a
# try: while a live worker holds its checkpoint (that one renders it), and otherwise for this long from
# its first such failure (a NAS rebooting, a router's update), each worker trying again only after
# DEPOT_DOWN_SECONDS; then it fails with the reason. A quarter of an hour outlasts a reboot.
DEPOT_WAIT_SECONDS = 900.0
# How long a worker trusts its last look at a depot record (present or absent) when choosing queues:
# steering looks after every task, a depot lookup is one GET.
DEPOT_LOOKUP_TTL = 30.0
