"""TensorFlow's out of memory said in one line, by the CLI and the widgets alike (review 2 of s64, 2): the training
widget's lost check of the corrections said "not enough memory (ResourceExhaustedError: Graph execution error:)", the
first line of TensorFlow's message, while the CLI found the allocation that failed with a helper of its own."""

import pytest

#: As TensorFlow builds it for an op in a tf.function (Keras' training step) that runs out of a GPU's memory.
GRAPH_OOM = ("Graph execution error:\n\nDetected at node model/conv2d_3/Conv2D defined at (most recent call last):\n"
             "  File \"train.py\", line 1, in <module>\n\nOOM when allocating tensor with shape[4,64,256,256] and type "
             "float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc\n\t [[{{node "
             "model/conv2d_3/Conv2D}}]]\nHint: If you want to see a list of allocated tensors when OOM happens, add "
             "report_tensor_allocations_upon_oom to RunOptions for current allocation info.\n [Op:__inference_step_1234]")
ALLOCATION = "OOM when allocating tensor with shape[4,64,256,256] and type float on /job:localhost/replica:0/task:0/device:GPU:0"


class ResourceExhaustedError(Exception):  # (TensorFlow's, by name)
    pass


def test_the_failed_allocation_is_found_in_tensorflows_message():
    from napari_unet.hardware import out_of_memory_line

    assert out_of_memory_line(ResourceExhaustedError(GRAPH_OOM)) == ALLOCATION
    eager = "{{function_node __wrapped__RandomUniform_device_/job:localhost}} OOM when allocating tensor with shape[9] [Op:RandomUniform]"
    assert out_of_memory_line(ResourceExhaustedError(eager)) == "OOM when allocating tensor with shape[9]"
    assert out_of_memory_line(ResourceExhaustedError("")) == "ResourceExhaustedError"


def test_the_widgets_lost_check_names_the_allocation_that_failed():
    pytest.importorskip("napari")
    from napari_unet._widgets.jobs import _why

    assert _why(ResourceExhaustedError(GRAPH_OOM)) == f"not enough memory for TensorFlow ({ALLOCATION})"
    assert _why(MemoryError("no room")) == "not enough memory (MemoryError: no room)"  # (as before)
    assert _why(ValueError("bad\nsecond line")) == "ValueError: bad"
    # at the interpreter's exit (as _unexpected says it), no "RuntimeError: cannot schedule new futures ..."
    assert _why(RuntimeError("cannot schedule new futures after interpreter shutdown")) == "ended by Python's exit"



@pytest.mark.parametrize("what, advice", [("training", "lower the batch size or the patch size (settings; a Retrain has its own)"),
                                          ("prediction", "a lower --batch-size or --tile-size")])
def test_the_widgets_training_and_prediction_running_out_of_tensorflows_memory_say_it_in_one_line(what, advice, caplog):
    # review 3 of s64, 7: the widgets' Train and Predict (jobs._unexpected) gave TensorFlow's whole message
    # ("ResourceExhaustedError: Graph execution error:\n\nDetected at node ... [Op:__inference_step_1234]")
    pytest.importorskip("napari")
    from napari_unet._widgets.jobs import _unexpected

    try:
        raise ResourceExhaustedError(GRAPH_OOM)
    except ResourceExhaustedError as err:  # (as the jobs call it)
        message = _unexpected(what, err).message
    assert message.startswith(f"not enough memory for TensorFlow ({ALLOCATION}); ") and message.endswith(advice), message
    assert "\n" not in message
    assert "ResourceExhaustedError" in caplog.text  # (its traceback still goes to the log)
