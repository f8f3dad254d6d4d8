"""Recording and logging validation results for the plugin's metric-training models."""
from basicsr.utils import get_root_logger


def record_validation(model, dataset_name, current_iter, tb_logger, header):
    """Update BasicSR's best-metric bookkeeping from ``model.metric_results`` and log it.

    Writes one log block (``header`` then ``# name: value  Best: ... @ iter``) and, when a
    TensorBoard logger is given, ``metrics/<dataset>/<name>`` scalars.
    """
    if model.metric_results:
        model._initialize_best_metric_results(dataset_name)
        for name, v in model.metric_results.items():
            model._update_best_metric_result(dataset_name, name, v, current_iter)
    log = header + '\n'
    for name, v in model.metric_results.items():
        best = model.best_metric_results[dataset_name][name]
        log += f'\t # {name}: {v:.4f}\tBest: {best["val"]:.4f} @ {best["iter"]} iter\n'
    get_root_logger().info(log)
    if tb_logger:
        for name, v in model.metric_results.items():
            tb_logger.add_scalar(f'metrics/{dataset_name}/{name}', v, current_iter)
