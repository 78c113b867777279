from selfsup.pipelines.runtime.distributed import detect_env


def test_torchrun_variables_win():
    env = detect_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.master_port, env.launcher) == (1, 4, 1234, "torchrun")


def test_an_srun_task_is_read_through_submitit(monkeypatch):
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }  # fmt: skip
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    env = detect_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.master_addr == "gpu07" and env.launcher == "slurm"
    assert env.master_port == 20000 + 4242  # from the job id: the same in every task
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert detect_env().master_port == 29999


def test_a_lone_process_and_the_batch_script_are_single():
    assert detect_env({}).launcher == "single"
    # The batch script of a 4-task job is one process (no step id): not distributed.
    assert not detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).distributed
