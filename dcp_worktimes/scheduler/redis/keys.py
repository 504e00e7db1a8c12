"""The keys of one group (``dcp:<group>:`` + ...), and why they are shaped so.

Kind first, job id last (``job:<id>``, ``ev:<id>``): a job id may contain ``:``, and with the
kind first no job's key can be another job's. Every key of a group starts with its prefix, so
an ACL rule ``~dcp:<group>:*`` confines a Redis user to its group.

Per group:

* ``jobs`` ZSET job id -> created: every job (``list_jobs``, newest first). Finished jobs expire
  (their hashes vanish; a listing drops the ids it finds gone).
* ``queue`` ZSET ``<created, fixed width>|<job id>`` -> ``-payment``: jobs that have slices to hand
  out now. Ascending score = best paying first; equal scores sort by member = older first. A job
  leaves it when nothing is left to lease and comes back when slices do (a retry, a return, an
  expired lease, new stream input).
* ``wake`` STREAM (capped): an entry whenever a job has new slices to hand out; idle workers block
  on it (``XREAD BLOCK``) instead of polling.
* ``leases`` ZSET lease id -> deadline (server clock): expiry is ``ZRANGEBYSCORE -inf now``.
* ``clock`` STRING the server time of the last lease or heartbeat call; ``quiet`` STRING
  ``"<from> <to>"``, the last gap of over ``QUIET_GAP`` s between two of them (the server down, or
  no client reaching it): leases that expired in it are spared for a while (common.lua ``reclaim``).
* ``feeds`` ZSET job id -> feed deadline (server clock) of a stream job whose deployer is still
  sending its input (``keep_feeding``); the reclaim cancels a job whose deadline passed with its
  input open. Left when the input closes or the job ends; a job never in it never expires so.
* ``workers`` HASH worker id -> its worktimes and capabilities; ``seen`` ZSET worker id -> last
  lease/heartbeat (server clock); ``host:<host key>`` HASH worker id -> pid, so a worker on the
  same machine notices a dead one at once.
* ``apps`` HASH application name -> the owner that first published it; ``app:<name>`` HASH
  version -> the ``ApplicationRecord`` (``applications.py``; they never expire).
* ``req:<token>`` a call that must not take effect twice (lease, submit, post_events, delete)
  remembers its token for five minutes: a retry after a lost reply returns the first answer.

Per job:

* ``job:<id>`` HASH: ``record`` (the ``JobRecord``, msgpack; immutable) and two small parts of it that
  every worker reads, ``match`` (worktime, range, requirements, categories) and ``input`` (the
  input description), so a worker downloads a job's work and files only to run it; ``status``, ``reason``,
  ``total`` ('' while a stream is open), ``described``, ``next`` (fresh-slice cursor of a described
  input), ``distributed``/``computed``/``failed``, ``seq`` (last event number), ``payment``,
  ``created``, ``qkey`` (its ``queue`` member), ``maxatt``, ``keep`` (seconds a finished job is kept).
* ``ev:<id>`` STREAM with ids ``0-<seq>``: the event log (``XREAD BLOCK`` wakes a waiting
  deployer). A result batch is one entry (``b`` = its index in ``res``, ``n`` = its slice count) at
  the id of its last sequence number: its slices own the ``n`` numbers up to it.
* ``res:<id>`` LIST: one element per reported batch, ``header + columns``: the header says which
  positions of the worker's columns counted and their attempts (see ``reads.decode_batch``).
* ``pend:<id>`` ZSET slice -> slice: retried and returned slices (leased before fresh ones);
  ``att:<id>`` HASH slice -> attempts so far (only for slices that were ever retried), and
  ``r<slice>`` -> 1 for a slice an expired lease returned unstarted (the next loss charges it).
* ``sq:<id>`` ZSET slice -> slice: stream slices not leased yet; ``sd:<id>`` HASH slice -> packed
  datum (kept while the job runs, so a slice added twice is not run twice).
* ``jl:<id>`` SET of its lease ids (dropped when the job ends).

Per lease (one per block handed out, never one per slice):

* ``lease:<id>`` HASH ``j`` job, ``w`` worker, ``c`` count, ``d`` settled, ``b`` one byte per slice
  (``\\x01`` = settled: a second report of it is ignored), and either ``f``/``s``: the run
  ``[f, s)`` of fresh slices, or ``n``/``a``: its slice numbers and attempts (msgpack); ``u``:
  the slices its worker had not started at its last heartbeat (msgpack; reclaim spares them).
* ``wl:<worker>`` SET of a worker's lease ids (a dead local worker's leases expire at once).
"""

from __future__ import annotations


class Keys:
    """Key names of one group, as the Python side reads them (the Lua side builds the same)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs = prefix + "jobs"
        self.queue = prefix + "queue"
        self.workers = prefix + "workers"
        self.seen = prefix + "seen"
        self.wake = prefix + "wake"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}ev:{job_id}"

    def results(self, job_id: str) -> str:
        return f"{self.prefix}res:{job_id}"

    @property
    def applications(self) -> str:
        return self.prefix + "apps"

    def application(self, name: str) -> str:
        return f"{self.prefix}app:{name}"

    def host(self, host_key: str) -> str:
        return f"{self.prefix}host:{host_key}"
