"""Numbers and names fixed by GLIGEN's released models and data, defined once."""

#: grounding tokens of the box tokenizers: at most 30 boxes per image (``max_objs`` in the
#: original's box ``PositionNet`` and ``prepare_batch``)
MAX_OBJS = 30

#: persons per image of the keypoint model (``max_persons_per_image`` of its config)
MAX_PERSONS = 8

#: COCO keypoints per person (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles);
#: the keypoint tokenizer learns one embedding per keypoint index
NUM_KEYPOINTS = 17

#: channels of the semantic-map one-hot: 151 ADE20K values (0 = unlabeled, 1..150 = classes)
#: plus one spare channel that is always zero (the released sem checkpoint takes 152)
SEM_CHANNELS = 152
#: largest class id of an ADE20K label map (0 = unlabeled)
MAX_SEM_LABEL = 150

#: the original's file holding SD v1.4's first conv ``{"weight": (320, 4, 3, 3), "bias": (320,)}``
SD_FIRST_CONV_FILE = "SD_input_conv_weight_bias.pth"
