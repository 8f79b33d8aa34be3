"""Layout of the blob table the segmentation kernel writes and the linker reads.

One row per blob, float64 columns indexed by these constants, all in ROI pixels (the tracker
converts to µm). ``segment_batch`` fills ``out[i_frame, i_blob, :]`` and ``counts[i_frame]``.
"""

B_AREA = 0  # mask area, px
B_X = 1  # centroid x (column), px
B_Y = 2  # centroid y (row), px
B_XMIN = 3  # bounding box, inclusive pixel indices
B_XMAX = 4
B_YMIN = 5
B_YMAX = 6
B_MAJOR = 7  # semi-major axis a of the moment ellipse, px
B_MINOR = 8  # semi-minor axis b, px
B_ANGLE = 9  # orientation of the major axis, rad, in (-pi/2, pi/2], 0 along x
B_HULL_AREA = 10  # convex hull area of the mask, px², polygon through pixel centres (as ShapeIn/dcnum)
B_HULL_PERIM = 11  # convex hull perimeter, px
B_BRIGHT_AVG = 12  # mean raw brightness inside the mask
B_BRIGHT_SD = 13  # sd of raw brightness inside the mask
B_BORDER = 14  # 1.0 if the mask touches the ROI border, else 0.0
B_CONTRAST = 15  # mean |image - background| inside the mask
B_SPLIT = 16  # cut from touching neighbours at a waist: 0 no, + 1 one upstream (lower x), + 2 one downstream
B_BG_OFF = 17  # the frame's brightness offset against the background (lamp flicker), grey levels; 0 unmeasured
B_LIGHT = 18  # the frame's light against the background's (gain, 1 = the same), which segmentation corrected for or not
N_BLOB_FIELDS = 19
