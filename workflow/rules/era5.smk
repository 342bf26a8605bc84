# ERA5: acquire (login node; not with source files) -> regrid (per group and year) -> assemble.


wildcard_constraints:
    group="pressure|single|static",
    period=r"\d{4}|static",


rule era5_all:
    input:
        f"{ASSEMBLED}/manifest.json",


# Downloads (cds, arco) need the internet: on clusters they run on the login node (OLCF: login or
# data transfer nodes; compute nodes have no internet). Synthetic data are compute: a batch job,
# in the same job group as its year's regridding (a grouped rule is never local, so the group is
# set here, for synthetic data only, and not in a profile). Groups apply under cluster executors.
rule era5_acquire:
    localrule: ERA5_SOURCE in ("cds", "arco")
    group: "era5_years" if ERA5_SOURCE == "synthetic" else None
    output:
        f"{RESOURCES}/era5/{ERA5_SOURCE}/{{group}}/{{period}}.nc",
    params:
        config_hash=CFG.section_hash("era5.source", "era5.channels", "era5.grid_deg", "era5.synthetic",
                                     "era5.cds", "era5.arco"),
        steps=era5_steps,
        cli=CLI,
        rule_name="era5_acquire",
    log:
        f"{LOGS}/era5/acquire/{{group}}_{{period}}.log",
    conda:
        "../../envs/era5.yaml"
    shell:
        "{params.cli} era5 acquire --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--group {wildcards.group} --period {wildcards.period} --output {output} > {log} 2>&1"


rule era5_regrid:
    input:
        era5_raw,
    output:
        data=f"{RESULTS}/era5/regridded/{{group}}/{{period}}.nc",
        preview=report(f"{RESULTS}/era5/regridded/{{group}}/{{period}}.png",
                       caption="../report/regrid_preview.rst", category="ERA5 regridding"),
    params:
        config_hash=CFG.section_hash("era5.regrid", "era5.channels"),
        steps=era5_steps,
        weights=f"{RESULTS}/era5/regrid_weights",
        cli=CLI,
        rule_name="era5_regrid",
    log:
        f"{LOGS}/era5/regrid/{{group}}_{{period}}.log",
    threads: 1  # small files are bound by Python overhead: run two at once locally; profiles raise it
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/era5.yaml"
    shell:
        "{params.cli} era5 regrid --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--group {wildcards.group} --period {wildcards.period} --input {input:q} "
        "--output {output.data} --preview {output.preview} --weights-dir {params.weights} > {log} 2>&1"


rule era5_assemble:
    input:
        [f"{RESULTS}/era5/regridded/{g}/{p}.nc" for g, p in ERA5_PIECES],
    output:
        splits=[directory(f"{ASSEMBLED}/{s}.zarr") for s in ("train", "val", "test")],
        climatology=directory(f"{ASSEMBLED}/climatology.zarr"),
        stats=f"{ASSEMBLED}/normalization.json",
        manifest=f"{ASSEMBLED}/manifest.json",
    params:
        config_hash=CFG.section_hash("era5.assemble", "era5.channels", "era5.years", "era5.hours"),
        out=parent_folder("manifest"),
        cli=CLI,
        rule_name="era5_assemble",
    log:
        f"{LOGS}/era5/assemble.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/era5.yaml"
    shell:
        "{params.cli} era5 assemble --config $DCHAG_CONFIG --rule {params.rule_name} "
        "--inputs {input} --output-dir {params.out} > {log} 2>&1"
