# Shared body of probe.sbatch and allocate.sbatch, sourced from the repository: one torchrun per node, all
# nodes meeting at a c10d rendezvous on the first node, and checkpoint-then-requeue on SLURM's warning signal.
set -euo pipefail

# sbatch runs a copy of the script from slurmd's spool folder, so the repository is found from the submit folder.
cd "${CURVENET_ROOT:-$SLURM_SUBMIT_DIR}"

# Usage: run_stage ENTRY_POINT CONFIG [key=value ...]
run_stage() {
    local entry_point=$1
    shift
    if (( $# < 1 )); then
        echo "usage: sbatch launch/slurm/<stage>.sbatch CONFIG [key=value ...]" \
             "(e.g. configs/quickstart.yaml run.dir=runs/x)" >&2
        exit 2
    fi

    local rendezvous_host nproc_per_node
    rendezvous_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    nproc_per_node=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
    # Two jobs sharing a node must not share a rendezvous port; below 32768, no outgoing connection holds it.
    local rendezvous_port=${RENDEZVOUS_PORT:-$((29500 + SLURM_JOB_ID % 1000))}
    local torchrun=(torchrun)
    command -v torchrun > /dev/null || torchrun=("${PYTHON:-python3}" -m torch.distributed.run)
    # Since SLURM 22.05 a step no longer inherits --cpus-per-task from the job: pass it on, or every torchrun
    # (and its workers and loader processes) would be confined to one CPU under task/affinity or task/cgroup.
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
        export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
    fi

    echo "job $SLURM_JOB_ID attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )): $SLURM_NNODES node(s) x $nproc_per_node" \
         "process(es), rendezvous $rendezvous_host:$rendezvous_port, $entry_point $*"

    warned=0
    # The warning (--signal=B:USR1@...) reaches only this shell. Steps get SIGTERM, on which the engine saves a
    # checkpoint and exits; `scancel` without --batch signals the job's steps and not this shell.
    trap 'warned=1; echo "pre-emption warning: asking the job step to checkpoint"
          scancel --signal=TERM "$SLURM_JOB_ID" || echo "could not signal the job step" >&2' USR1

    srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
        "${torchrun[@]}" \
        --nnodes="$SLURM_NNODES" \
        --nproc_per_node="$nproc_per_node" \
        --rdzv_backend=c10d \
        --rdzv_endpoint="$rendezvous_host:$rendezvous_port" \
        --rdzv_id="$SLURM_JOB_ID" \
        "$entry_point" --config "$@" &
    local step_pid=$! status=0
    wait "$step_pid" || status=$?
    if (( warned )); then
        # The trap interrupted `wait`; wait again while the step writes its checkpoint.
        status=0
        wait "$step_pid" || status=$?
        echo "job step stopped (status $status); requeueing job $SLURM_JOB_ID to resume from its checkpoint"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    exit "$status"
}
