# Registration data only: Metaflow reads these lists; an import error here only warns.
STEP_DECORATORS_DESC = [("deploy", "tritonflow.plugin.deploy_decorator.DeployDecorator")]
