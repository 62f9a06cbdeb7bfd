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

