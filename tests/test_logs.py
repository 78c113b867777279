import logging

from selfsup.logs import log_to_file, process_rank


def test_rank_from_torchrun_then_srun_variables():
    assert process_rank({}) == 0
    assert process_rank({"SLURM_PROCID": "3"}) == 3
    assert process_rank({"RANK": "1", "SLURM_PROCID": "3"}) == 1  # torchrun inside an allocation
    assert process_rank({"RANK": ""}) == 0


def test_log_file_gets_the_lines_of_its_block_only(tmp_path):
    logger = logging.getLogger("selfsup.test")
    path = tmp_path / "train.log"
    with log_to_file(path):
        logger.info("inside")
    logger.info("after")
    text = path.read_text()
    assert "INFO selfsup.test: inside" in text and "after" not in text
    with log_to_file(tmp_path / "off.log", enabled=False):
        logger.info("not written")
    assert not (tmp_path / "off.log").exists()
