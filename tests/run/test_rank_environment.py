"""How a rank finds its place and rank 0's address under each launcher, and the network settings that
are refused at start because they would hang a multi-node run (no processes: environments as launchers
set them)."""

import socket

import pytest

from spanbert_ds.errors import UserError
from spanbert_ds.run import distributed
from spanbert_ds.run.distributed import check_network, fill_rank_environment, first_host, spans_nodes


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("node[1-2]", "node1"), ("gpu[07-12,15],cpu1", "gpu07"), ("a[01-02]b[3-4]", "a01b3"),
    ("n[1-2]-ib,x", "n1-ib"), ("node2,node1", "node2"), ("rack[3]", "rack3"),
])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert first_host(nodelist) == first


@pytest.mark.parametrize("env, spans", [
    ({"CROSS_SIZE": "2"}, True), ({"CROSS_SIZE": "1"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, False),
    ({"SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "0"}, True),
    ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"}, True), ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, False),
    ({}, False),
])
def test_spans_nodes_reads_each_launchers_variables(env, spans):
    assert spans_nodes(env) is spans


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(distributed.os.environ):
        if name.startswith(("OMPI_", "SLURM_", "MASTER_", "GLOO_", "NCCL_")) or name in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "CROSS_SIZE", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_srun_outside_sbatch_takes_the_first_host_of_the_step_and_a_port_of_the_job(clean_env):
    for name, value in dict(SLURM_STEP_ID="0", SLURM_PROCID="1", SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0",
                            SLURM_STEP_NUM_NODES="1", SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID="4242").items():
        clean_env.setenv(name, value)
    assert fill_rank_environment() == (1, 2, 0)
    assert distributed.os.environ["MASTER_ADDR"] == "localhost"
    assert distributed.os.environ["MASTER_PORT"] == str(20000 + 4242 * 7 % 20000)


def test_mpirun_across_nodes_without_mpi4py_or_an_address_is_one_line(clean_env, monkeypatch):
    for name, value in dict(OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_LOCAL_RANK="0",
                            OMPI_COMM_WORLD_LOCAL_SIZE="2").items():
        clean_env.setenv(name, value)
    monkeypatch.setitem(__import__("sys").modules, "mpi4py", None)  # import mpi4py fails
    with pytest.raises(UserError, match="mpirun across nodes needs the address of rank 0's host"):
        fill_rank_environment()


def test_mpi_interface_the_node_lacks_is_refused_before_mpi_init_crashes(clean_env):
    for name, value in dict(OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK="0",
                            OMPI_COMM_WORLD_LOCAL_SIZE="1", OMPI_MCA_btl_tcp_if_include="nosuch0").items():
        clean_env.setenv(name, value)
    with pytest.raises(UserError, match="btl_tcp_if_include names nosuch0.*--launcher_args"):
        fill_rank_environment()


def multi_node(**env):
    return {"CROSS_SIZE": "2", "MASTER_ADDR": "10.213.7.1", "MASTER_PORT": "29500", **env}


def test_a_gloo_interface_the_node_lacks_is_named_with_those_it_has():
    with pytest.raises(UserError, match=r"GLOO_SOCKET_IFNAME=nosuch0, but node .* has no interface nosuch0 \(it has: .*lo"):
        check_network({"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "nosuch0"})


def test_loopback_settings_are_refused_only_across_nodes():
    check_network({"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"})  # one node: what the tests use
    with pytest.raises(UserError, match="GLOO_SOCKET_IFNAME=lo keeps the collectives on loopback"):
        check_network(multi_node(GLOO_SOCKET_IFNAME="lo"))
    with pytest.raises(UserError, match="NCCL_SOCKET_IFNAME=lo keeps the collectives on loopback"):
        check_network(multi_node(NCCL_SOCKET_IFNAME="lo"))
    with pytest.raises(UserError, match="MASTER_ADDR=localhost is loopback, but this run's ranks are on several nodes"):
        check_network(multi_node(MASTER_ADDR="localhost"))


def test_a_hostname_that_resolves_to_loopback_is_refused_across_nodes(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    with pytest.raises(UserError, match="hostname localhost resolves to a loopback address.*GLOO_SOCKET_IFNAME"):
        check_network(multi_node())
