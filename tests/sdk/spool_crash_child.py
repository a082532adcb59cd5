"""One app process of test_sdk_spool_crashes: logs its events through a RouteLedger client,
then ends as told: killed (it sleeps until then), exiting (exit handlers flush, then
spool), abandoning (os._exit, as multiprocessing workers end), or, as the last process,
flushing everything. On stdout, one line `spooled <request id>` once each event is on disk.

Argument: a JSON object with endpoint, spool_dir, ids, end, batch_size, max_queue, and
optionally file_size_limit (bytes: a full disk) and present_pid_1 (without a PID
namespace, pid 1 is faked for the earlier, pid-based spool to see)."""

import json
import os
import resource
import sys
import time

args = json.loads(sys.argv[1])
if args.get("present_pid_1"):
    os.getpid = lambda: 1
if args.get("file_size_limit"):
    resource.setrlimit(resource.RLIMIT_FSIZE, (args["file_size_limit"], resource.RLIM_INFINITY))

from routeledger import RouteLedger  # noqa: E402  (after the pid and the limit are set)
from routeledger.spool import Spool  # noqa: E402

write_to_spool = Spool.append


def append_and_report(spool, kind, lines):
    written = write_to_spool(spool, kind, lines)
    if written:  # a pipe: neither the file size limit nor the spool's disk applies
        ids = [json.loads(line)["request_id"] for line in lines]
        os.write(1, "".join(f"spooled {request_id}\n" for request_id in ids).encode())
    return written


Spool.append = append_and_report

client = RouteLedger(
    api_key="test-key",
    endpoint=args["endpoint"],
    spool_dir=args["spool_dir"],
    batch_size=args["batch_size"],
    max_queue=args["max_queue"],
    flush_interval=0.02,
    max_retries=0,
    shutdown_timeout=1.0,
)
for number, request_id in enumerate(args["ids"]):
    with client.request(customer_id="acme", feature="crash", request_id=request_id) as req:
        req.attempt("gpt-4o-mini", "cheap", 10, 5)
    if number % 10 == 9:
        time.sleep(0.002)  # the worker sends and spools while the app goes on

if args["end"] == "flush":
    sys.exit(0 if client.flush(60) else 3)
if args["end"] == "abandon":
    os._exit(0)
if args["end"] == "kill":
    time.sleep(120)
