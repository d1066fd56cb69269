-- Cancel the job: the operator stops its worker Pod (the worker keeps its best result so far) and the job
-- ends Cancelled. Commit spec.cancel: true to Git as well, or the Application shows OutOfSync.
obj.spec.cancel = true
return obj
