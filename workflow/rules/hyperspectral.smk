# Hyperspectral: (synthetic scenes) -> preprocess per image (parallel) -> tiles + stats.
HS = CFG.hyperspectral
HS_IMAGES = CFG.hyperspectral_images()
HS_RAW = f"{RESOURCES}/hyperspectral/synthetic"
HS_OUT = f"{RESULTS}/hyperspectral"

wildcard_constraints:
    image="|".join(re.escape(n) for n in HS_IMAGES) or "NONE",

localrules:
    hs_acquire,


def hs_cubes(wildcards):
    """raw, white, dark data files of one image: generated (synthetic) or from config (files)."""
    if HS["source"] == "files":
        entry = next(f for f in HS["files"] if f["name"] == wildcards.image)
        return {"raw": entry["raw"], "white": entry["white"], "dark": entry["dark"]}
    return {"raw": f"{HS_RAW}/{wildcards.image}.raw",
            "white": f"{HS_RAW}/{wildcards.image}_white.raw",
            "dark": f"{HS_RAW}/{wildcards.image}_dark.raw"}


rule hs_all:
    input:
        f"{HS_OUT}/tiles/stats.json",


rule hs_acquire:
    output:
        multiext(f"{HS_RAW}/{{image}}", ".raw", ".hdr", "_white.raw", "_white.hdr", "_dark.raw", "_dark.hdr"),
    params:
        config_hash=CFG.section_hash("hyperspectral.synthetic"),
    log:
        f"{LOGS}/hyperspectral/acquire/{{image}}.log",
    conda:
        "../../envs/hyperspectral.yaml"
    shell:
        "{CLI} hyperspectral acquire --config {EFFECTIVE_CONFIG} --image {wildcards.image} "
        "--output-dir {HS_RAW} 2> {log}"


rule hs_preprocess:
    input:
        unpack(hs_cubes),
    output:
        data=directory(f"{HS_OUT}/calibrated/{{image}}.zarr"),
        summary=f"{HS_OUT}/calibrated/{{image}}.json",
        preview=report(f"{HS_OUT}/calibrated/{{image}}.png", caption="../report/hs_preview.rst",
                       category="Hyperspectral", subcategory="previews"),
    params:
        config_hash=CFG.section_hash("hyperspectral.bands", "hyperspectral.calibrate", "hyperspectral.mask"),
    log:
        f"{LOGS}/hyperspectral/preprocess/{{image}}.log",
    resources:
        mem_mb=4000,
    conda:
        "../../envs/hyperspectral.yaml"
    shell:
        "{CLI} hyperspectral preprocess --config {EFFECTIVE_CONFIG} --rule {rule} --image {wildcards.image} "
        "--raw {input.raw} --white {input.white} --dark {input.dark} --output {output.data} "
        "--summary {output.summary} --preview {output.preview} 2> {log}"


rule hs_tiles:
    input:
        data=expand(f"{HS_OUT}/calibrated/{{image}}.zarr", image=HS_IMAGES),
        summaries=expand(f"{HS_OUT}/calibrated/{{image}}.json", image=HS_IMAGES),
    output:
        tiles=directory(expand(f"{HS_OUT}/tiles/{{split}}.zarr", split=["train", "val", "test"])),
        stats=f"{HS_OUT}/tiles/stats.json",
        spectra=report(f"{HS_OUT}/spectra.png", caption="../report/hs_spectra.rst", category="Hyperspectral"),
    params:
        config_hash=CFG.section_hash("hyperspectral.tiles", "hyperspectral.splits"),
        out=f"{HS_OUT}/tiles",
    log:
        f"{LOGS}/hyperspectral/tiles.log",
    resources:
        mem_mb=8000,
    conda:
        "../../envs/hyperspectral.yaml"
    shell:
        "{CLI} hyperspectral tiles --config {EFFECTIVE_CONFIG} --rule {rule} --inputs {input.data} "
        "--summaries {input.summaries} --output-dir {params.out} --spectra {output.spectra} 2> {log}"
