"""A Python client generated from proto/ with the stock generator (grpcio-tools), used by
the system tests to prove the .proto files are a contract other languages can use as is.

Usage: client.py GENERATED_DIR MASTER_ADDR
Plays a client (submit, get, list, watch) and a worker (register, acquire, complete) and
prints one JSON line with what it saw.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)
from weir.v1 import job_pb2, master_pb2, master_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel(sys.argv[2])
jobs = master_pb2_grpc.JobServiceStub(channel)
workers = master_pb2_grpc.WorkerServiceStub(channel)

spec = job_pb2.JobSpec(
    namespace="py",
    name="from-python",
    run_id="py-1",
    labels={"lang": "python"},
    steps=[
        job_pb2.StepSpec(id="a", kind="noop", queue="api"),
        job_pb2.StepSpec(id="b", kind="noop", queue="api", depends_on=["a"],
                         retry=job_pb2.RetryPolicy(max_attempts=2,
                                                   initial_interval=duration_pb2.Duration(nanos=100_000_000))),
    ],
)
submitted = jobs.SubmitJob(master_pb2.SubmitJobRequest(spec=spec))
again = jobs.SubmitJob(master_pb2.SubmitJobRequest(spec=spec))
job_id = submitted.job.id

try:
    jobs.SubmitJob(master_pb2.SubmitJobRequest(spec=job_pb2.JobSpec(name="bad")))
    invalid = "accepted"
except grpc.RpcError as e:
    invalid = f"{e.code().name}: {e.details()}"

workers.RegisterWorker(master_pb2.RegisterWorkerRequest(worker_id="py-worker", queue="api", capacity=1))
done = []
for _ in range(2):
    r = workers.AcquireTasks(master_pb2.AcquireTasksRequest(
        worker_id="py-worker", queue="api", max_tasks=1, wait=duration_pb2.Duration(seconds=5)))
    for lease in r.leases:
        workers.CompleteTask(master_pb2.CompleteTaskRequest(
            worker_id="py-worker", task_id=lease.task_id, fence_token=lease.fence_token, output_json='{"by":"python"}'))
        done.append(lease.step_id)

events = [e.event.type for e in jobs.WatchJob(master_pb2.WatchJobRequest(job_id=job_id))]
job = jobs.GetJob(master_pb2.GetJobRequest(job_id=job_id)).job
listed = jobs.ListJobs(master_pb2.ListJobsRequest(namespace="py", labels={"lang": "python"})).jobs
# What grpcio-reflection (v1alpha) finds: the services and one method's input type.
reflection = ProtoReflectionDescriptorDatabase(channel)
reflected = sorted(reflection.get_services())
submit_input = reflection.FindFileContainingSymbol("weir.v1.JobService").package
print(json.dumps({
    "created": submitted.created,
    "created_again": again.created,
    "same_id": again.job.id == job_id,
    "invalid": invalid,
    "done": done,
    "state": job_pb2.JobState.Name(job.state),
    "listed": [j.id for j in listed],
    "job_id": job_id,
    "last_event": events[-1] if events else None,
    "reflected": reflected,
    "reflected_package": submit_input,
}))
