"""BasicSR's root logger, set up again for the next training run in the same process.

``basicsr.utils.logger.get_root_logger`` adds its handlers once per process and remembers that in the module
dict ``initialized_logger``; a second ``train_pipeline`` in the same process (the small reproduction's stages,
several option files in one torchrun launch) would then log into the first run's ``train_*.log``.
"""
import logging


def reset_basicsr_logger():
    """Close and drop the 'basicsr' logger's handlers and forget that BasicSR set it up, so that the next
    ``get_root_logger`` call (at the next run's start) opens that run's own log file. Returns None."""
    from basicsr.utils import logger as basicsr_logger

    log = logging.getLogger('basicsr')
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    basicsr_logger.initialized_logger.pop('basicsr', None)
