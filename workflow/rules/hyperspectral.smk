# Hyperspectral: (synthetic scenes) -> preprocess per image (parallel) -> tiles + stats.


wildcard_constraints:
    image="|".join(re.escape(n) for n in HS_IMAGES) or "NONE",


rule hs_all:
    input:
        f"{HS_TILES}/stats.json",


# The synthetic scenes' compute: a batch job on clusters (nothing heavy on a login node).
rule hs_acquire:
    output:
        multiext(f"{HS_RAW}/{{image}}", ".raw", ".hdr", "_white.raw", "_white.hdr", "_dark.raw", "_dark.hdr",
                 "_traits.raw", "_traits.hdr"),
    params:
        config_hash=CFG.section_hash("hyperspectral.synthetic"),
        out=parent_folder(0),
        cli=CLI,
    log:
        f"{LOGS}/hyperspectral/acquire/{{image}}.log",
    conda:
        "../../envs/hyperspectral.yaml"
    shell:
        "{params.cli} hyperspectral acquire --config $DCHAG_CONFIG --image {wildcards.image} "
        "--output-dir {params.out} > {log} 2>&1"


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
        entry=hs_entry,
        traits=lambda wildcards, input: f"--traits {input.traits} " if "traits" in input.keys() else "",
        cli=CLI,
        rule_name="hs_preprocess",
    log:
        f"{LOGS}/hyperspectral/preprocess/{{image}}.log",
    resources:
        mem_mb=4000,
    conda:
        "../../envs/hyperspectral.yaml"
    shell:
        "{params.cli} hyperspectral preprocess --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--image {wildcards.image} --raw {input.raw} --white {input.white} --dark {input.dark} {params.traits}"
        "--output {output.data} --summary {output.summary} --preview {output.preview} > {log} 2>&1"


rule hs_tiles:
    input:
        data=expand(rules.hs_preprocess.output.data, image=HS_IMAGES),
        summaries=expand(rules.hs_preprocess.output.summary, image=HS_IMAGES),
    output:
        tiles=directory(expand(f"{HS_TILES}/{{split}}.zarr", split=["train", "val", "test"])),
        stats=f"{HS_TILES}/stats.json",
        spectra=report(f"{HS_OUT}/spectra.png", caption="../report/hs_spectra.rst", category="Hyperspectral"),
    params:
        config_hash=CFG.section_hash("hyperspectral.tiles", "hyperspectral.splits"),
        out=parent_folder("stats"),
        cli=CLI,
        rule_name="hs_tiles",
    log:
        f"{LOGS}/hyperspectral/tiles.log",
    resources:
        mem_mb=8000,
    conda:
        "../../envs/hyperspectral.yaml"
    shell:
        "{params.cli} hyperspectral tiles --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--inputs {input.data} --summaries {input.summaries} --output-dir {params.out} "
        "--spectra {output.spectra} > {log} 2>&1"
